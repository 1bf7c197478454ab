"""Names starting with '.' are hidden from listings and refused by every command."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
from pathlib import Path

import pytest

from conftest import download, listing, upload

PASSWORD = "secret"


@pytest.fixture
def home(tree) -> Path:
    """alice's home: .xxftp/, .hidden, sub/.secret and visible files.

    Decoys catch a server that strips leading dots (as xxftp did):
    ``xxftp/password`` and ``sub/secret`` exist without the dot.
    """
    home = tree.user("alice", password=PASSWORD)
    tree.file("alice/.hidden", b"hidden content")
    tree.file("alice/sub/.secret", b"secret content")
    tree.file("alice/sub/ok.txt", b"ok content")
    tree.file("alice/visible.txt", b"visible content")
    tree.file("alice/a/.xxftp/b", b"nested config")
    tree.file("alice/xxftp/password", b"decoy")
    tree.file("alice/sub/secret", b"decoy")
    tree.file("alice/sub/newname", b"decoy")
    return home


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything about the tree that a command could change."""
    result: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if name in files:
                with open(path, "rb") as f:
                    result[rel] = ("file", st.st_mode, st.st_mtime_ns, f.read())
            else:
                result[rel] = ("dir", st.st_mode)
    return result


def assert_untouched(home: Path, before: dict) -> None:
    assert (home / ".xxftp" / "password").read_text().strip() == hashlib.md5(PASSWORD.encode()).hexdigest()
    assert (home / ".hidden").read_bytes() == b"hidden content"
    assert not (home / "sub" / ".newname").exists()
    assert snapshot(home) == before


def shown_names(lines: list[str]) -> set[str]:
    """Entry names of LIST/MLSD/STAT lines."""
    out = set()
    for line in lines:
        line = line.strip()
        if not line or line[:3].isdigit():
            continue
        if "=" in line.split(" ", 1)[0]:  # MLSD: facts then name
            out.add(line.split(" ", 1)[1])
        else:  # ls -l: the name is the last field
            out.add(line.split()[-1])
    return out


def stat_lines(ftp: ftplib.FTP, path: str) -> list[str]:
    reply = ftp.sendcmd(f"STAT {path}")
    lines = reply.splitlines()
    assert lines[0].startswith("213-") and lines[-1].startswith("213"), reply
    return lines[1:-1]


@pytest.fixture
def alice(home, tree, start_server, connect) -> ftplib.FTP:
    srv = start_server(tree.root)
    return connect(srv.port, "alice", PASSWORD, timeout=5)


# --- listings


@pytest.mark.parametrize("path", ["", "/", "."])
def test_root_listings_hide_dot_names(alice, path):
    expected = {"sub", "visible.txt", "a", "xxftp"}
    assert shown_names(listing(alice, "LIST", path)) == expected
    assert {n.rsplit("/", 1)[-1] for n in listing(alice, "NLST", path)} == expected
    assert shown_names(listing(alice, "MLSD", path)) == expected
    assert shown_names(stat_lines(alice, path or "/")) == expected


def test_sub_listings_hide_dot_names(alice):
    expected = {"ok.txt", "secret", "newname"}
    assert shown_names(listing(alice, "LIST", "sub")) == expected
    assert {n.rsplit("/", 1)[-1] for n in listing(alice, "NLST", "sub")} == expected
    assert shown_names(listing(alice, "MLSD", "sub")) == expected
    assert shown_names(stat_lines(alice, "sub")) == expected
    alice.cwd("sub")
    assert shown_names(listing(alice, "LIST")) == expected
    assert shown_names(listing(alice, "MLSD")) == expected


@pytest.mark.parametrize("option", ["-a", "-la", "-al", "-l"])
def test_list_all_option_still_hides_dot_names(alice, option):
    names = shown_names(listing(alice, "LIST", option))
    assert names == {"sub", "visible.txt", "a", "xxftp"}


def test_no_listing_line_mentions_a_dot_name(alice):
    lines = (listing(alice, "LIST") + listing(alice, "NLST") + listing(alice, "MLSD")
             + stat_lines(alice, "/") + listing(alice, "LIST", "sub") + listing(alice, "MLSD", "sub")
             + listing(alice, "LIST", "a") + listing(alice, "MLSD", "a"))
    for line in lines:
        assert ".xxftp" not in line and ".hidden" not in line and ".secret" not in line, line


@pytest.mark.parametrize("path", [".xxftp", ".hidden", "sub/.secret", ".xxftp/password", "a/.xxftp/b", "a/.xxftp"])
def test_mlst_of_hidden_name_fails(alice, path):
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        alice.sendcmd(f"MLST {path}")
    assert alice.sendcmd("MLST visible.txt").startswith("250")


# --- every command on every hidden path


def _retr(ftp, path):
    return ftp.retrbinary(f"RETR {path}", lambda data: None)


def _store(cmd):
    def run(ftp, path):
        return ftp.storbinary(f"{cmd} {path}", io.BytesIO(b"overwritten!"))
    return run


def _lines(cmd):
    def run(ftp, path):
        return ftp.retrlines(f"{cmd} {path}", lambda line: None)
    return run


def _simple(cmd):
    def run(ftp, path):
        return ftp.sendcmd(f"{cmd} {path}")
    return run


def _rnto(ftp, path):
    assert ftp.sendcmd("RNFR visible.txt").startswith("350")
    return ftp.sendcmd(f"RNTO {path}")


# command name -> (how to send it, code the server must answer)
COMMANDS = {
    "RETR": (_retr, "550"),
    "STOR": (_store("STOR"), "550"),
    "STOU": (_store("STOU"), "550"),
    "APPE": (_store("APPE"), "550"),
    "DELE": (_simple("DELE"), "550"),
    "RMD": (_simple("RMD"), "550"),
    "MKD": (_simple("MKD"), "550"),
    "CWD": (_simple("CWD"), "550"),
    "SIZE": (_simple("SIZE"), "550"),
    "MDTM": (_simple("MDTM"), "550"),
    "RNFR": (_simple("RNFR"), "550"),
    "RNTO": (_rnto, "550"),
    "SITE CHMOD": (_simple("SITE CHMOD 644"), "550"),
    "MFMT": (_simple("MFMT 20200101000000"), "550"),
    "LIST": (_lines("LIST"), "550"),
    "NLST": (_lines("NLST"), "550"),
    "MLSD": (_lines("MLSD"), "550"),
    "MLST": (_simple("MLST"), "550"),
}
HIDDEN_PATHS = [".xxftp", ".xxftp/password", "sub/.secret", "sub/.newname", "a/.xxftp/b"]


def attempt(ftp: ftplib.FTP, command: str, path: str) -> str:
    """Send one command; it must be refused with a 5xx reply. The reply."""
    run, code = COMMANDS[command]
    with pytest.raises(ftplib.error_perm) as exc:
        run(ftp, path)
    reply = str(exc.value)
    assert reply.startswith(code), f"{command} {path}: {reply}"
    return reply


@pytest.mark.parametrize("path", HIDDEN_PATHS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_on_hidden_path_is_refused(home, alice, command, path):
    before = snapshot(home)
    attempt(alice, command, path)
    assert_untouched(home, before)
    assert alice.sendcmd("NOOP").startswith("200")
    assert alice.pwd() == "/"


@pytest.mark.parametrize("path", HIDDEN_PATHS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_on_hidden_path_from_subfolder(home, alice, command, path):
    """The same with relative paths resolved from a subfolder, through '..'."""
    alice.cwd("sub")
    before = snapshot(home)
    if command == "RNTO":  # RNFR source relative to sub/
        assert alice.sendcmd("RNFR ok.txt").startswith("350")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            alice.sendcmd(f"RNTO ../{path}")
    else:
        attempt(alice, command, f"../{path}")
    assert_untouched(home, before)
    assert alice.pwd() == "/sub"


def test_connection_still_works_after_every_refusal(home, alice):
    before = snapshot(home)
    for command in COMMANDS:
        for path in HIDDEN_PATHS:
            attempt(alice, command, path)
    assert_untouched(home, before)
    assert alice.sendcmd("NOOP").startswith("200")
    assert download(alice, "visible.txt") == b"visible content"
    assert download(alice, "sub/ok.txt") == b"ok content"
    upload(alice, "new.txt", b"fresh")
    assert (home / "new.txt").read_bytes() == b"fresh"


def test_visible_names_still_work(home, alice):
    """The refusals above are about the dot, not about the commands."""
    alice.voidcmd("TYPE I")
    assert alice.size("visible.txt") == len(b"visible content")
    assert alice.sendcmd("MDTM visible.txt").startswith("213")
    alice.sendcmd("SITE CHMOD 644 visible.txt")
    alice.sendcmd("MFMT 20200101000000 visible.txt")
    alice.rename("visible.txt", "sub/renamed.txt")
    assert (home / "sub" / "renamed.txt").read_bytes() == b"visible content"
    alice.mkd("newdir")
    alice.rmd("newdir")
    upload(alice, "sub/up.txt", b"x")
    upload(alice, "sub/up.txt", b"y", cmd="APPE")
    assert (home / "sub" / "up.txt").read_bytes() == b"xy"
    alice.delete("sub/up.txt")
    assert not (home / "sub" / "up.txt").exists()


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_and_dotdot_components_are_navigation(alice, name):
    """'.' and '..' are not hidden names: they navigate (never above /)."""
    alice.cwd(f"sub/{name}")
    assert alice.pwd() == ("/sub" if name == "." else "/")
    alice.cwd("/")
    alice.cwd(name)
    assert alice.pwd() == "/"
