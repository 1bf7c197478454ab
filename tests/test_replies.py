"""Every command that names a path answers 550 when the path does not exist,
and RFC 959/3659's code when it is of the wrong kind (xxftp_pyftpdlib/replies.py).

Over real sockets with ftplib against a real server. The codes are written
out here, not read from the table: these tests say what clients must see.
"""

from __future__ import annotations

import ftplib
import os
from pathlib import Path

import pytest

from conftest import download, upload
from xxftp_pyftpdlib import replies

PASSWORD = "pw"


def _simple(cmd: str):
    def send(ftp: ftplib.FTP, path: str) -> str:
        return ftp.sendcmd(f"{cmd} {path}")
    return send


def _data(cmd: str):
    def send(ftp: ftplib.FTP, path: str) -> str:
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd(f"{cmd} {path}") as conn:
            while conn.recv(65536):
                pass
        return ftp.voidresp()
    return send


# command -> (how to send it, what it works on, its code for the wrong kind,
#             its success code on the right kind)
COMMANDS = {
    "MLSD": (_data("MLSD"), "folder", "501", "226"),
    "MLST": (_simple("MLST"), "any", None, "250"),
    "LIST": (_data("LIST"), "any", None, "226"),
    "NLST": (_data("NLST"), "any", None, "226"),
    "STAT": (_simple("STAT"), "any", None, "213"),
    "SIZE": (_simple("SIZE"), "file", "550", "213"),
    "MDTM": (_simple("MDTM"), "file", "550", "213"),
    "MFMT": (_simple("MFMT 20200101000000"), "file", "550", "213"),
    "CWD": (_simple("CWD"), "folder", "550", "250"),
    "XCWD": (_simple("XCWD"), "folder", "550", "250"),
    "RETR": (_data("RETR"), "file", "550", "226"),
    "DELE": (_simple("DELE"), "file", "550", "250"),
    "RMD": (_simple("RMD"), "folder", "550", "250"),
    "XRMD": (_simple("XRMD"), "folder", "550", "250"),
    "RNFR": (_simple("RNFR"), "any", None, "350"),
    "SITE CHMOD": (_simple("SITE CHMOD 644"), "any", None, "200"),
    "SITE QUOTA": (_simple("SITE QUOTA"), "any", None, "200"),
    "HASH": (_simple("HASH"), "file", "553", "213"),
    "XSHA256": (_simple("XSHA256"), "file", "550", "213"),
    "XSHA512": (_simple("XSHA512"), "file", "550", "213"),
    "XSHA1": (_simple("XSHA1"), "file", "550", "213"),
    "XMD5": (_simple("XMD5"), "file", "550", "213"),
    "XCRC": (_simple("XCRC"), "file", "550", "213"),
}

# Paths that do not exist, seen from the home's root.
MISSING = ["nope", "nope/deeper/still", "file.txt/under-a-file", "folder/nope", "team/nope", "team/sub/nope"]
# (path of a file, path of an empty folder): in the home and inside a mount.
KINDS = {"home": ("file.txt", "folder/empty"), "mount": ("team/sub/t.txt", "team/sub/empty")}


@pytest.fixture
def home(tree) -> Path:
    home = tree.user("alice", password=PASSWORD, virtual="team $root/team-space read,write,modify\n")
    tree.file("alice/file.txt", b"file content")
    tree.folder("alice/folder/empty")
    tree.file("team-space/sub/t.txt", b"team content")
    tree.folder("team-space/sub/empty")
    return home


@pytest.fixture
def alice(home, tree, start_server, connect) -> ftplib.FTP:
    ftp = connect(start_server(tree.root).port, "alice", PASSWORD)
    ftp.voidcmd("TYPE I")  # SIZE is refused in ASCII mode
    return ftp


def refused(ftp: ftplib.FTP, command: str, path: str) -> str:
    """Send ``command`` on ``path``; it must be refused. The reply."""
    send = COMMANDS[command][0]
    with pytest.raises(ftplib.error_perm) as exc:
        send(ftp, path)
    return str(exc.value)


def test_every_command_of_the_table_is_tested_here():
    assert set(COMMANDS) == set(replies.RULES)


@pytest.mark.parametrize("path", MISSING)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_missing_path_is_550(alice, tree, command, path):
    before = sorted(p.relative_to(tree.root) for p in tree.root.rglob("*"))
    reply = refused(alice, command, path)
    assert reply.startswith("550 No such file or directory: /"), reply
    assert "/" + path in reply
    assert sorted(p.relative_to(tree.root) for p in tree.root.rglob("*")) == before
    assert alice.pwd() == "/"
    assert alice.sendcmd("NOOP").startswith("200")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_missing_path_is_550_from_a_subfolder_and_by_absolute_path(alice, command):
    alice.cwd("team/sub")
    assert refused(alice, command, "nope").startswith("550 ")
    assert refused(alice, command, "/team/sub/nope").startswith("550 ")
    assert refused(alice, command, "../../nope").startswith("550 ")
    assert alice.pwd() == "/team/sub"


@pytest.mark.parametrize("where", list(KINDS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_wrong_kind_gets_the_rfc_code_and_the_right_kind_works(alice, tree, command, where):
    send, needs, wrong_code, ok_code = COMMANDS[command]
    file, folder = KINDS[where]
    if needs == "any":
        paths = {file: ok_code, folder: ok_code}
    else:
        right, wrong = (file, folder) if needs == "file" else (folder, file)
        paths = {wrong: wrong_code, right: ok_code}
    for path, code in paths.items():
        alice.cwd("/")
        if code.startswith("5"):
            reply = refused(alice, command, path)
            words = "Not a directory" if needs == "folder" else "Is a directory"
            assert reply.startswith(f"{code} {words}: /{path}"), reply
            assert (tree.root / "alice" / path).exists() or where == "mount"
        else:
            reply = send(alice, path)
            assert reply.startswith(code), f"{command} {path}: {reply}"


def test_the_mount_point_itself_is_a_folder(alice):
    assert refused(alice, "SIZE", "team").startswith("550 Is a directory: /team")
    assert refused(alice, "RETR", "team").startswith("550 Is a directory: /team")
    assert COMMANDS["MLSD"][0](alice, "team").startswith("226")


def test_a_hidden_name_is_550_with_the_trees_reason(alice):
    """A refused path answers 550 for MLSD too (pyftpdlib's own MLSD said 501)."""
    for command in COMMANDS:
        reply = refused(alice, command, ".xxftp")
        assert reply.startswith("550 "), f"{command}: {reply}"
        assert "No such file" not in reply, f"{command}: {reply}"


def test_size_mdtm_mfmt_still_say_not_retrievable(alice):
    for command in ("SIZE", "MDTM", "MFMT"):
        assert "not retrievable" in refused(alice, command, "nope")
        assert "not retrievable" in refused(alice, command, "folder")


def test_a_refused_retr_uses_up_its_rest(alice):
    alice.voidcmd("TYPE I")
    assert alice.sendcmd("REST 5").startswith("350")
    assert refused(alice, "RETR", "nope").startswith("550 ")
    assert download(alice, "file.txt") == b"file content"


def test_a_fifo_is_not_a_file_to_read_but_can_be_deleted(alice, home):
    """RETR of a FIFO would block the server in open(): refused up front."""
    os.mkfifo(home / "pipe")
    assert refused(alice, "RETR", "pipe").startswith("550 Not a regular file: /pipe")
    assert refused(alice, "SIZE", "pipe").startswith("550 ")
    assert alice.sendcmd("DELE pipe").startswith("250")
    assert not (home / "pipe").exists()


def test_a_client_creates_the_missing_folders_it_was_told_of(alice, home):
    """What rclone does: MLSD answers 550, so it makes each folder and fills it."""
    parts = ["team", "backup", "2024"]
    for depth in range(1, len(parts)):
        path = "/".join(parts[:depth + 1])
        assert refused(alice, "MLSD", path).startswith("550 ")
        alice.mkd(path)
        assert COMMANDS["MLSD"][0](alice, path).startswith("226")
    upload(alice, "team/backup/2024/x.bin", b"payload")
    assert (home.parent / "team-space/backup/2024/x.bin").read_bytes() == b"payload"
