"""Virtual directories over real sockets: nesting, navigation, listings,
bad configuration, loops, caching."""

from __future__ import annotations

import ftplib
import logging
import os
import time

import pytest

from conftest import download, listing, upload


def names(ftp, path=""):
    return sorted(ftp.nlst(path) if path else ftp.nlst())


@pytest.fixture
def nested(tree):
    """alice -> /l1 (rw) -> /l1/l2 (read,write) -> /l1/l2/sub/l3 (read)."""
    tree.user("alice", password="pw", virtual="l1 $root/t1 read,write,modify\n")
    tree.file("t1/one.txt", b"1")
    tree.xxftp(tree.folder("t1"), "virtual", "l2 $root/t2 read,write\n")
    tree.file("t2/sub/two.txt", b"22")
    tree.xxftp(tree.folder("t2/sub"), "virtual", "l3 $root/t3 read\n")
    tree.file("t3/three.txt", b"333")
    return tree


def test_nested_mounts_three_levels(nested, start_server, connect):
    ftp = connect(start_server(nested.root).port, "alice", "pw")
    assert "l1" in names(ftp)
    assert names(ftp, "/l1") == ["l2", "one.txt"]
    assert names(ftp, "/l1/l2/sub") == ["l3", "two.txt"]
    assert download(ftp, "/l1/l2/sub/l3/three.txt") == b"333"
    ftp.cwd("/l1/l2/sub/l3")
    assert ftp.pwd() == "/l1/l2/sub/l3"
    ftp.cwd("..")
    assert ftp.pwd() == "/l1/l2/sub"
    ftp.sendcmd("CDUP")
    ftp.sendcmd("CDUP")
    assert ftp.pwd() == "/l1"
    ftp.sendcmd("CDUP")
    assert ftp.pwd() == "/"
    ftp.sendcmd("CDUP")
    assert ftp.pwd() == "/"


def test_size_mdtm_rest_through_mounts(nested, start_server, connect):
    ftp = connect(start_server(nested.root).port, "alice", "pw")
    ftp.voidcmd("TYPE I")
    assert ftp.sendcmd("SIZE /l1/l2/sub/l3/three.txt") == "213 3"
    mtime = os.stat(nested.root / "t3/three.txt").st_mtime
    expected = time.strftime("%Y%m%d%H%M%S", time.gmtime(mtime))
    assert ftp.sendcmd("MDTM /l1/l2/sub/l3/three.txt") == f"213 {expected}"
    chunks = []
    ftp.retrbinary("RETR /l1/l2/sub/l3/three.txt", chunks.append, rest=1)
    assert b"".join(chunks) == b"33"
    # REST + STOR inside a read,write,modify mount
    upload(ftp, "/l1/r.bin", b"abcdef")
    ftp.sendcmd("REST 3")
    ftp.storbinary("STOR /l1/r.bin", __import__("io").BytesIO(b"XYZ"))
    assert (nested.root / "t1/r.bin").read_bytes() == b"abcXYZ"


def test_mount_in_listings_and_mlst(nested, start_server, connect):
    ftp = connect(start_server(nested.root).port, "alice", "pw")
    lines = listing(ftp, "LIST")
    assert any(line.startswith("d") and line.endswith(" l1") for line in lines)
    mlsd = listing(ftp, "MLSD")
    assert any("type=dir" in line and line.endswith(" l1") for line in mlsd)
    mlst = ftp.sendcmd("MLST /l1/l2")
    assert "type=dir" in mlst and "/l1/l2" in mlst
    stat = ftp.sendcmd("STAT /")
    assert " l1" in stat
    pwd_reply = ftp.sendcmd("CWD /l1/l2")
    assert '"/l1/l2"' in pwd_reply and str(nested.root) not in pwd_reply


def test_mount_declared_in_subfolder_and_inside_target(tree, start_server, connect):
    home = tree.user("alice", password="pw")
    tree.xxftp(tree.folder("alice/docs"), "virtual", "deep $root/deep-target read\n")
    tree.file("deep-target/d.txt", b"deep")
    tree.xxftp(tree.folder("deep-target"), "virtual", "deeper $root/deeper-target read\n")
    tree.file("deeper-target/e.txt", b"deeper")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    assert names(ftp, "/docs") == ["deep"]
    ftp.cwd("/docs/deep")
    assert ftp.pwd() == "/docs/deep"
    assert download(ftp, "deeper/e.txt") == b"deeper"
    assert home.exists()


def test_mount_hides_real_entry(tree, start_server, connect):
    tree.user("alice", password="pw", virtual="pub $root/pub-target read\n")
    tree.file("alice/pub/real.txt", b"hidden by mount")
    tree.file("pub-target/mounted.txt", b"mounted")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    assert names(ftp, "/pub") == ["mounted.txt"]
    assert [n for n in names(ftp) if n == "pub"] == ["pub"]  # listed once
    with pytest.raises(ftplib.error_perm):
        download(ftp, "/pub/real.txt")


def test_mount_point_is_protected_whatever_the_permission(tree, start_server, connect):
    tree.user("alice", password="pw", virtual="rw $root/rw-target read,write,modify\n")
    tree.file("rw-target/x.txt", b"x")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    for cmd in ("DELE /rw", "RMD /rw", "MKD /rw", "RNFR /rw", "SITE CHMOD 700 /rw"):
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.sendcmd(cmd)
    with pytest.raises(ftplib.error_perm, match="^550"):
        upload(ftp, "/rw", b"over")
    upload(ftp, "/other.txt", b"o")
    ftp.sendcmd("RNFR /other.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("RNTO /rw")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("RMD /")
    assert (tree.root / "rw-target/x.txt").read_bytes() == b"x"
    assert (tree.root / "alice/other.txt").exists()


def test_malformed_lines_skipped_and_logged_once(tree, start_server, connect, caplog):
    tree.user("alice", password="pw", virtual=(
        "# comment\n\n"
        "good $root/good-target read\n"
        "toofew $root/good-target\n"
        "too many fields here read\n"
        "badword $root/good-target read,fly\n"
        "a/b $root/good-target read\n"
        ".dot $root/good-target read\n"
        "missing $root/no-such-folder read\n"
        "notdir $root/plain-file read\n"
        "good2 $root/good-target read,write\n"
    ))
    tree.folder("good-target")
    tree.file("plain-file", b"f")
    caplog.set_level(logging.WARNING, logger="xxftpd")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    for _ in range(3):
        assert names(ftp) == ["good", "good2"]
        for bad in ("toofew", "badword", "missing", "notdir"):
            with pytest.raises(ftplib.error_perm, match="^550"):
                ftp.cwd("/" + bad)
    text = caplog.text
    for needle in ("virtual:4:", "virtual:5:", "virtual:6:", "virtual:7:", "virtual:8:"):
        assert text.count(needle) == 1, needle
    assert text.count("no-such-folder") == 1
    assert text.count("plain-file") == 1
    assert ftp.voidcmd("NOOP").startswith("200")


def test_edit_takes_effect_on_next_command(tree, start_server, connect):
    tree.user("alice", password="pw", virtual="a $root/ta read\n")
    tree.folder("ta")
    tree.folder("tb")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    assert names(ftp) == ["a"]
    virtual = tree.root / "alice/.xxftp/virtual"
    virtual.write_text("a $root/ta read\nb $root/tb read,write\n")
    assert names(ftp) == ["a", "b"]
    (tree.root / "alice/.xxftp/permission").write_text("read\n")
    with pytest.raises(ftplib.error_perm, match="'write'"):
        upload(ftp, "/new.txt", b"n")
    upload(ftp, "/b/new.txt", b"n")
    # target created after the line was written shows up without an edit
    virtual.write_text("a $root/ta read\nlate $root/tlate read\n")
    assert names(ftp) == ["a"]
    tree.folder("tlate")
    assert names(ftp) == ["a", "late"]


def test_a_target_swapped_on_disk_is_followed_on_the_next_command(tree, start_server, connect):
    """The real folder of a mount target is remembered only while its path
    leads to the same folder: a target moved away and replaced (by another
    folder, a link, a file) is seen as it is now."""
    tree.user("alice", password="pw", virtual="m $root/target read\n")
    tree.file("target/first.txt", b"1")
    tree.file("other/second.txt", b"2")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    ftp.cwd("/m")  # crossed once: its real folder is known
    assert names(ftp, "/m") == ["first.txt"]
    target = tree.root / "target"
    target.rename(tree.root / "old-target")
    target.symlink_to(tree.root / "other")
    assert names(ftp, "/m") == ["second.txt"]
    assert download(ftp, "/m/second.txt") == b"2"
    target.unlink()
    target.write_bytes(b"not a folder")
    with pytest.raises(ftplib.error_perm, match="unavailable"):
        ftp.cwd("/m")
    target.unlink()
    (tree.root / "old-target").rename(target)
    assert names(ftp, "/m") == ["first.txt"]


@pytest.mark.parametrize("virtual, bad_path", [
    ("loop $root/alice read\n", "/loop"),
    ("all $root read\n", "/all"),
    ("self . read\n", "/self"),
])
def test_mount_loops_are_refused(tree, start_server, connect, virtual, bad_path):
    tree.user("alice", password="pw", virtual=virtual)
    tree.file("alice/f.txt", b"f")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    assert names(ftp) == ["f.txt"]
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.cwd(bad_path)
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.nlst(bad_path + bad_path)
    assert ftp.voidcmd("NOOP").startswith("200")


def test_indirect_loop_two_mounts(tree, start_server, connect):
    tree.user("alice", password="pw", virtual="x $root/tx read\n")
    tree.xxftp(tree.folder("tx"), "virtual", "y $root/ty read\n")
    tree.xxftp(tree.folder("ty"), "virtual", "back $root/tx read\nhome $root/alice read\nok $root/tz read\n")
    tree.folder("tz")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    assert names(ftp, "/x/y") == ["ok"]
    for path in ("/x/y/back", "/x/y/home"):
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.cwd(path)


def test_rmd_of_folder_with_looping_mount_terminates(tree, start_server, connect):
    tree.user("alice", password="pw")
    tree.xxftp(tree.folder("alice/sub"), "virtual", "up $root/alice read\n")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    assert names(ftp, "/sub") == []
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.rmd("/sub")  # holds .xxftp/: not empty, refused, nothing loops
    assert (tree.root / "alice/sub/.xxftp/virtual").exists()


@pytest.mark.parametrize("concurrency", ["async", "multi-thread"])
def test_mounts_under_server_classes(nested, start_server, connect, concurrency):
    srv = start_server(nested.root, concurrency=concurrency)
    ftp = connect(srv.port, "alice", "pw")
    assert download(ftp, "/l1/l2/sub/l3/three.txt") == b"333"
    with pytest.raises(ftplib.error_perm, match="'write'"):
        upload(ftp, "/l1/l2/sub/l3/new.txt", b"n")
    upload(ftp, "/l1/l2/new.txt", b"n")
    assert (nested.root / "t2/new.txt").read_bytes() == b"n"
