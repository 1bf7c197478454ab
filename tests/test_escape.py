"""No escape: hostile paths and planted symlinks, over real sockets."""

from __future__ import annotations

import ftplib
import os

import pytest

from conftest import download, upload

SECRET = b"bob's secret"

HOSTILE = [
    "../bob/secret.txt",
    "../../bob/secret.txt",
    "/../bob/secret.txt",
    "/../../../../etc/passwd",
    "..//..//bob/secret.txt",
    "./../bob/secret.txt",
    "sub/../../bob/secret.txt",
    "%2e%2e/bob/secret.txt",
    "%2E%2E%2Fbob%2Fsecret.txt",
    "..%2fbob%2fsecret.txt",
    "..\\bob\\secret.txt",
    "....//bob/secret.txt",
    ".../bob/secret.txt",
    "//bob/secret.txt",
    "~bob/secret.txt",
    "~/../bob/secret.txt",
    "link-to-bob/secret.txt",
    "link-to-root/bob/secret.txt",
    "link-to-etc/passwd",
    "sub/deep-link/secret.txt",
    "dangling-out",
]


@pytest.fixture
def planted(tree):
    home = tree.user("alice", password="pw")
    bob = tree.user("bob", password="bobpw")
    (bob / "secret.txt").write_bytes(SECRET)
    (home / "sub").mkdir()
    (home / "mine.txt").write_bytes(b"mine")
    os.symlink(bob, home / "link-to-bob")
    os.symlink(tree.root, home / "link-to-root")
    os.symlink("/etc", home / "link-to-etc")
    os.symlink("../../bob", home / "sub" / "deep-link")
    os.symlink("/tmp/xxftpd-never-created", home / "dangling-out")
    os.symlink("mine.txt", home / "inside-link")
    return tree


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_path_reaches_nothing(planted, start_server, connect, path):
    ftp = connect(start_server(planted.root).port, "alice", "pw")
    with pytest.raises(ftplib.error_perm, match="^550"):
        download(ftp, path)
    with pytest.raises(ftplib.error_perm, match="^5"):
        ftp.sendcmd(f"SIZE {path}")
    for cmd in ("DELE", "RMD"):
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.sendcmd(f"{cmd} {path}")
    before = set(os.listdir(planted.root / "alice"))
    try:  # a name with no path meaning (e.g. "%2E%2E%2F...") is a literal name in the home
        ftp.sendcmd(f"MKD {path}")
    except ftplib.error_perm as err:
        assert str(err).startswith("550")
    else:
        assert set(os.listdir(planted.root / "alice")) - before == {path}
        ftp.rmd(path)
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.cwd(path)
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.cwd(os.path.dirname(path) or path)
    assert ftp.pwd() == "/"
    try:
        upload(ftp, path, b"planted")
    except ftplib.error_perm:
        pass
    assert (planted.root / "bob/secret.txt").read_bytes() == SECRET
    assert not os.path.exists("/tmp/xxftpd-never-created")
    assert not (planted.root / "bob" / "planted").exists()
    assert ftp.voidcmd("NOOP").startswith("200")


def test_dotdot_is_clamped_at_home(planted, start_server, connect):
    ftp = connect(start_server(planted.root).port, "alice", "pw")
    ftp.cwd("..")
    assert ftp.pwd() == "/"
    ftp.cwd("/../../..")
    assert ftp.pwd() == "/"
    assert download(ftp, "../../mine.txt") == b"mine"  # means /mine.txt


def test_escaping_symlinks_are_not_listed_inside_ones_work(planted, start_server, connect):
    ftp = connect(start_server(planted.root).port, "alice", "pw")
    listed = set(ftp.nlst())
    assert listed == {"inside-link", "mine.txt", "sub"}
    assert download(ftp, "inside-link") == b"mine"
    assert set(ftp.nlst("sub")) == set()
    for cmd in ("LIST", "NLST", "MLSD"):
        with pytest.raises(ftplib.error_perm, match="^5"):
            ftp.retrlines(f"{cmd} link-to-bob", lambda line: None)


def test_symlink_into_mount_does_not_borrow_home_rights(tree, start_server, connect):
    """A link inside the home to a read-only mount's target stays outside the home's area."""
    home = tree.user("alice", password="pw", virtual="ro $root/ro-target read\n")
    tree.file("ro-target/doc.txt", b"doc")
    os.symlink(tree.root / "ro-target", home / "back-door")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    with pytest.raises(ftplib.error_perm, match="^550"):
        upload(ftp, "back-door/doc.txt", b"overwritten")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.delete("back-door/doc.txt")
    assert (tree.root / "ro-target/doc.txt").read_bytes() == b"doc"


def test_names_with_control_characters_are_refused(tree, start_server, connect):
    tree.user("alice", password="pw")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    for name in (b"a\x00b", b"a\rb"):
        ftp.sock.sendall(b"MKD " + name + b"\r\n")
        with pytest.raises(ftplib.error_perm, match="^5"):
            ftp.getresp()
    assert not any("\x00" in p.name for p in (tree.root / "alice").iterdir())
    assert ftp.voidcmd("NOOP").startswith("200")
