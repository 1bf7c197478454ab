"""LIST and MLSD lines: the same text as pyftpdlib's for the same entries,
and times that can't be shown never break a listing."""

from __future__ import annotations

import os
import time

from pyftpdlib.filesystems import AbstractedFS

from xxftp_pyftpdlib import listing
from xxftp_pyftpdlib.authorizer import XxftpAuthorizer
from xxftp_pyftpdlib.filesystem import XxftpFS
from xxftp_pyftpdlib.permissions import FULL, Permission

FACTS = ["type", "perm", "size", "modify", "create", "unix.mode", "unix.uid", "unix.gid", "unique"]


class Channel:
    use_gmt_times = True
    encoding = "utf8"
    unicode_errors = "replace"

    def __init__(self, root) -> None:
        self.authorizer = XxftpAuthorizer(str(root))


def _both(tree):
    home = tree.user("alice")
    folder = home / "stuff"
    folder.mkdir()
    now = time.time()
    for i, age in enumerate([0, 3600, 200 * 86400, 20 * 365 * 86400]):  # recent and old files
        path = folder / f"file{i}.txt"
        path.write_bytes(b"x" * (i * 1000))
        os.utime(path, (now - age, now - age))
    (folder / "sub").mkdir()
    (folder / "name with spaces and é").write_bytes(b"")
    ours = XxftpFS(str(home), Channel(tree.root))
    theirs = AbstractedFS(str(home), Channel(tree.root))
    return ours, theirs


def _lines(fs, method: str, *args) -> list[str]:
    path = fs.ftp2fs("/stuff")
    names = sorted(fs.listdir(path))
    return b"".join(getattr(fs, method)(path, names, *args)).decode().split("\r\n")


def test_list_lines_are_pyftpdlib_s(tree):
    ours, theirs = _both(tree)
    assert _lines(ours, "format_list") == _lines(theirs, "format_list")


def test_mlsd_lines_are_pyftpdlib_s_but_for_the_perm_fact(tree):
    ours, theirs = _both(tree)

    def without_perm(lines: list[str]) -> list[str]:
        return [";".join(f for f in line.split(";") if not f.startswith("perm=")) for line in lines]

    mine = _lines(ours, "format_mlsx", "elradfmwMT", FACTS)
    assert len(mine) == 7 and all("perm=" in line for line in mine if line)
    assert without_perm(mine) == without_perm(_lines(theirs, "format_mlsx", "elradfmwMT", FACTS))


def test_facts_follow_each_entry_s_kind_and_permission():
    line = listing.mlsx_formatter(["type", "perm", "unix.mode", "size"], time.gmtime, "elradfmwMT")
    read_only = Permission.parse("read")[0]
    st_file = os.stat_result((0o100664, 1, 1, 1, 0, 0, 5, 0, 0, 0))
    st_dir = os.stat_result((0o40775, 2, 1, 1, 0, 0, 4096, 0, 0, 0))
    assert line("a", st_file, FULL, False) == "perm=adfrw;size=5;type=file;unix.mode=0o664; a\r\n"
    assert line("b", st_file, read_only, False) == "perm=r;size=5;type=file;unix.mode=0o444; b\r\n"
    assert line("c", st_dir, FULL, True) == "perm=celmp;size=4096;type=dir;unix.mode=0o775; c\r\n"
    assert line("d", st_dir, read_only, False) == "perm=el;size=4096;type=dir;unix.mode=0o555; d\r\n"
    assert line("e", st_file, FULL, False) == "perm=adfrw;size=5;type=file;unix.mode=0o664; e\r\n"  # template reused


def test_a_time_that_can_t_be_shown_leaves_its_fact_out():
    st = os.stat_result((0o100644, 5, 6, 1, 0, 0, 10, 1e300, 1e300, 1e300))
    line = listing.mlsx_formatter(FACTS, time.gmtime, "elradfmwMT")
    text = line("f", st, FULL, False)
    assert "modify=" not in text and "create=" not in text
    assert text == "perm=adfrw;size=10;type=file;unique=6g5;unix.gid=0;unix.mode=0o644;unix.uid=0; f\r\n"
    ls = listing.list_formatter(str, str, time.gmtime, time.time())("f", st, FULL)
    assert ls.startswith("-rw-r--r--   1 0        0              10 ") and ls.endswith(" f\r\n")


def test_names_with_line_breaks_are_never_listed(tree, start_server, connect):
    """A CR or LF in a name would forge listing lines: such files stay unlisted."""
    from conftest import listing as lines_of

    home = tree.user("alice", password="pw")
    for name in ("ok.txt", "bad\nname.txt", "bad\rname.txt", "tail\n"):
        (home / name).write_bytes(b"x")
    srv = start_server(tree.root)
    ftp = connect(srv.port, "alice", "pw")
    assert [line.rsplit("/", 1)[-1] for line in lines_of(ftp, "NLST")] == ["ok.txt"]
    assert [line.split()[-1] for line in lines_of(ftp, "LIST")] == ["ok.txt"]
    assert [name for name, _ in ftp.mlsd()] == ["ok.txt"]


def test_big_folders_list_every_entry_once_across_chunks(tree):
    """Lines go out in chunks of several lines: every entry lands in exactly
    one, in order, and one that vanishes between NLST and its stat is left out."""
    ours, theirs = _both(tree)
    folder = tree.root / "alice/stuff"
    for i in range(3 * 16 + 5):
        (folder / f"n{i:03d}").write_bytes(b"z" * i)
    assert _lines(ours, "format_list") == _lines(theirs, "format_list")
    path = ours.ftp2fs("/stuff")
    names = sorted(ours.listdir(path))
    (folder / "n007").unlink()
    chunks = list(ours.format_list(path, names))
    assert len(chunks) > 3 and all(chunk.endswith(b"\r\n") for chunk in chunks)
    shown = [line.split(None, 8)[-1] for line in b"".join(chunks).decode().split("\r\n") if line]
    assert shown == [name for name in names if name != "n007"]


def test_a_listed_big_folder_leaves_no_stats_behind(tree):
    """Once its lines are made, a listing keeps nothing per file: a session
    that listed a 2,000-file folder held about 1.5 MB of stats until it
    listed again or logged out."""
    import tracemalloc

    home = tree.user("alice")
    folder = home / "big"
    folder.mkdir()
    for i in range(2000):
        (folder / f"f{i:04d}").write_bytes(b"")
    fs = XxftpFS(str(home), Channel(tree.root))
    path = fs.ftp2fs("/big")
    for method, extra in (("format_list", ()), ("format_mlsx", ("elr", FACTS))):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            names = fs.listdir(path)
            lines = b"".join(getattr(fs, method)(path, names, *extra))
            del names
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert lines.count(b"\r\n") == 2000
        assert held < 400_000, f"{method}: {held} bytes still held after the listing"
    again = b"".join(fs.format_list(path, ["f0001"]))  # asked again: resolved afresh
    assert again.endswith(b" f0001\r\n")
