"""Hidden means hidden through symbolic links: a link whose real path has a
dot name below its area's root is refused and left out of listings, and a
mount into a hidden folder is refused and reported."""

from __future__ import annotations

import ftplib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import listing

PASSWORD = "pw"

# link name -> what it leads to (relative to the folder it sits in), in alice's home
HOME_LINKS = {
    "settings": ".xxftp",  # a folder link to the configuration
    "quota.txt": ".xxftp/size",  # a file link into it
    "config": ".config",
    "app.ini": ".config/app.ini",
    "sub/peek": ".private",  # at depth, to a hidden folder beside it
    "sub/deeper/up": "../../.config",  # at depth, climbing back to the home's
    "sub/deeper/note": "../.private/note.txt",
}
# in the mount target $root/shared, seen at /pub
MOUNT_LINKS = {
    "look": ".hidden",
    "inner/file": "../.hidden/data.txt",
}
# a path below each folder link that names a real file, for RETR/DELE/RNFR/SIZE
INSIDE = {"settings": "size", "config": "app.ini", "sub/peek": "note.txt", "sub/deeper/up": "app.ini",
          "pub/look": "data.txt"}


@pytest.fixture
def linked(tree):
    home = tree.user("alice", password=PASSWORD, size="10M", virtual="pub $root/shared read,write,modify\n")
    tree.file("alice/.config/app.ini", b"config of alice")
    tree.file("alice/sub/.private/note.txt", b"private note")
    tree.file("alice/sub/deeper/plain.txt", b"plain")
    tree.file("alice/visible.txt", b"visible")
    for name, target in HOME_LINKS.items():
        os.symlink(target, home / name)
    os.symlink(str(home / ".config"), home / "absolute")  # an absolute link to a hidden folder
    shared = tree.folder("shared")
    tree.file("shared/.hidden/data.txt", b"hidden data")
    tree.folder("shared/inner")
    for name, target in MOUNT_LINKS.items():
        os.symlink(target, shared / name)
    os.symlink("visible.txt", home / "fine")  # a link that stays visible: the rule is about dot names only
    return tree


def hidden_state(root: Path) -> dict[str, tuple]:
    """Every entry under a hidden folder of the tree (the ledger aside): names, bytes, modes, times."""
    found = {}
    for folder, dirs, files in os.walk(root):
        hidden = "/." in folder[len(str(root)):]
        for name in dirs + files:
            path = os.path.join(folder, name)
            if not (hidden or name.startswith(".")) or name == "ledger":
                continue
            st = os.lstat(path)
            if os.path.isfile(path) and not os.path.islink(path):
                found[os.path.relpath(path, root)] = (st.st_mode, st.st_mtime_ns, Path(path).read_bytes())
            else:  # a folder's time changes with the ledger made in it: its names are what counts
                found[os.path.relpath(path, root)] = (st.st_mode,)
    return found


def folder_links() -> list[str]:
    return ["settings", "config", "sub/peek", "sub/deeper/up", "absolute", "pub/look"]


def file_links() -> list[str]:
    return ["quota.txt", "app.ini", "sub/deeper/note", "pub/inner/file"]


def refused(ftp: ftplib.FTP, command: str) -> str:
    with pytest.raises(ftplib.error_perm) as err:
        ftp.sendcmd(command)
    return str(err.value)


def test_every_command_through_a_link_to_a_hidden_name_is_refused(linked, start_server, connect):
    before = hidden_state(linked.root)
    ftp = connect(start_server(linked.root).port, "alice", PASSWORD)
    ftp.voidcmd("TYPE I")
    paths = [f"{link}/{INSIDE.get(link, 'app.ini')}" for link in folder_links()] + file_links()
    for path in paths:
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.retrbinary(f"RETR {path}", lambda data: pytest.fail(f"read through {path}"))
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.storbinary(f"STOR {path}", io.BytesIO(b"0\n"))
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.storbinary(f"APPE {path}", io.BytesIO(b"0\n"))
        for command in (f"SIZE {path}", f"MDTM {path}", f"DELE {path}", f"RNFR {path}", f"MLST {path}",
                        f"SITE CHMOD 777 {path}", f"MFMT 20000101000000 {path}"):
            assert refused(ftp, command).startswith("550"), command
        ftp.sendcmd("RNFR visible.txt")
        assert refused(ftp, f"RNTO {path}").startswith("550")
    for link in folder_links():
        assert refused(ftp, f"CWD {link}").startswith("550")
        assert ftp.pwd() == "/"
        assert refused(ftp, f"MKD {link}/new").startswith("550")
        assert refused(ftp, f"RMD {link}").startswith("550")
        for command in ("LIST", "NLST", "MLSD"):
            with pytest.raises(ftplib.error_perm, match="^550"):
                listing(ftp, command, link)
    assert hidden_state(linked.root) == before
    assert download_ok(ftp, "fine") == b"visible"  # a link to a visible name still works


def download_ok(ftp: ftplib.FTP, path: str) -> bytes:
    out = io.BytesIO()
    ftp.retrbinary(f"RETR {path}", out.write)
    return out.getvalue()


def test_links_to_hidden_names_are_left_out_of_listings(linked, start_server, connect):
    ftp = connect(start_server(linked.root).port, "alice", PASSWORD)
    hidden_links = {path.rsplit("/", 1)[-1] for path in folder_links() + file_links()}
    for folder in ("", "sub", "sub/deeper", "pub", "pub/inner"):
        for command in ("LIST", "NLST", "MLSD"):
            names = {line.split()[-1].rsplit("/", 1)[-1] for line in listing(ftp, command, folder)}
            assert not names & hidden_links, (folder, command, names)
    names = {line.rsplit("/", 1)[-1] for line in listing(ftp, "NLST", "")}
    assert {"fine", "visible.txt", "sub", "pub"} <= names


def test_a_mount_into_a_hidden_folder_is_refused_and_reported_once(tree, start_server, connect, caplog, tmp_path):
    outside = tmp_path / "outside" / ".secret" / "data"
    outside.mkdir(parents=True)
    (outside / "x.txt").write_bytes(b"outside secret")
    tree.user("bob", password="bobpw")
    tree.file("bob/.xxftp/notes/a.txt", b"bob's config")
    tree.user("alice", password=PASSWORD,
              virtual=f"bobcfg $root/bob/.xxftp/notes read,write,modify\nsecret {outside} read\nok $root/bob read\n")
    ftp = connect(start_server(tree.root).port, "alice", PASSWORD)
    with caplog.at_level(logging.WARNING, logger="xxftpd.config"):
        for _ in range(3):
            for name in ("bobcfg", "secret"):
                assert refused(ftp, f"CWD {name}").startswith("550")
                assert refused(ftp, f"SIZE {name}/{'a.txt' if name == 'bobcfg' else 'x.txt'}").startswith("550")
                with pytest.raises(ftplib.error_perm, match="^550"):
                    ftp.retrbinary(f"RETR {name}/x.txt", lambda data: pytest.fail("read a hidden target"))
            names = set(listing(ftp, "NLST", ""))
            assert names == {"ok"}, names
    reports = [r.getMessage() for r in caplog.records if "hidden folder" in r.getMessage()]
    assert len(reports) == 2, reports
    assert any("bobcfg" in r for r in reports) and any("secret" in r for r in reports)
    ftp.cwd("ok")  # the home itself is a fine target


def test_check_reports_links_to_hidden_names_and_mounts_into_hidden_folders(linked, tmp_path):
    (linked.root / "alice/.xxftp/virtual").write_text(
        "pub $root/shared read,write,modify\nbad $root/alice/.config read\n")
    done = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(linked.root), "check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "alice/.xxftp/virtual:2: mount 'bad': target '" + str(linked.root) + \
        "/alice/.config' lies in a hidden folder: refused" in lines
    for link, target in HOME_LINKS.items():
        real = os.path.relpath(os.path.realpath(linked.root / "alice" / link), linked.root / "alice")
        line = f"alice/{link}:0: symbolic link {link.rsplit('/', 1)[-1]!r} leads to a hidden name ({real}): " \
               "refused (warning)"
        assert line in lines, (line, lines)
    for link in MOUNT_LINKS:
        assert any(line.startswith(f"shared/{link}:0: symbolic link") for line in lines), lines
    assert not any("alice/fine" in line for line in lines)
    assert lines[-1] == "1 error(s), 11 warning(s)", lines  # 10 links and the password file's mode
