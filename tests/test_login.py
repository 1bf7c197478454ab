"""Logins: passwords, unknown and invalid users, anonymous, attempt limits."""

from __future__ import annotations

import ftplib
import hashlib
import logging
import os
import socket

import pytest

from conftest import HOST, listing


def names(ftp: ftplib.FTP, path: str = "") -> set[str]:
    return {line.rsplit("/", 1)[-1] for line in listing(ftp, "NLST", path)}


def failed_login(ftp: ftplib.FTP, user: str, password: str) -> str:
    """USER (must get 331) then PASS (must get 530); the 530 text."""
    resp = ftp.sendcmd(f"USER {user}")
    assert resp.startswith("331"), resp
    with pytest.raises(ftplib.error_perm) as exc:
        ftp.sendcmd(f"PASS {password}")
    text = str(exc.value)
    assert text.startswith("530 "), text
    return text


@pytest.fixture
def users(tree):
    """alice (password "secret"), bob (no password), anonymous, carol ("pw")."""
    tree.user("alice", password="secret")
    tree.file("alice/alice_only.txt", b"a")
    tree.user("bob")
    tree.file("bob/bob_only.txt", b"b")
    tree.user("anonymous")
    tree.file("anonymous/anon_only.txt", b"anon")
    tree.user("carol", password="pw")
    tree.file("carol/carol_only.txt", b"c")
    return tree


def wrong_password_text(port: int, connect) -> str:
    """The 530 text a wrong password gets on a fresh connection.

    (One server per test: in-process servers share pyftpdlib's IOLoop.)
    """
    return failed_login(connect(port), "alice", "not-the-password")


def test_good_password_logs_in(users, start_server, connect):
    srv = start_server(users.root)
    ftp = connect(srv.port)
    assert ftp.sendcmd("USER alice").startswith("331")
    assert ftp.sendcmd("PASS secret").startswith("230")
    assert ftp.pwd() == "/"
    assert names(ftp) == {"alice_only.txt"}


def test_wrong_password_is_refused(users, start_server, connect):
    srv = start_server(users.root)
    ftp = connect(srv.port)
    failed_login(ftp, "alice", "Secret")
    # Not logged in: a command that needs a login is refused.
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.sendcmd("PWD")


def test_empty_password_is_refused_for_user_with_password(users, start_server, connect):
    srv = start_server(users.root)
    ftp = connect(srv.port)
    assert ftp.sendcmd("USER alice").startswith("331")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.sendcmd("PASS")


def test_unknown_user_looks_like_wrong_password(users, start_server, connect):
    srv = start_server(users.root)
    text = failed_login(connect(srv.port), "nosuchuser", "whatever")
    assert text == wrong_password_text(srv.port, connect)


def test_user_without_password_file_logs_in_on_user(users, start_server, connect):
    srv = start_server(users.root)
    ftp = connect(srv.port)
    resp = ftp.sendcmd("USER bob")
    assert resp.startswith("230"), resp
    assert ftp.pwd() == "/"
    assert names(ftp) == {"bob_only.txt"}


def test_anonymous_lands_in_anonymous_folder(users, start_server, connect):
    srv = start_server(users.root)
    ftp = connect(srv.port)
    assert ftp.sendcmd("USER anonymous").startswith("331")
    assert ftp.sendcmd("PASS any@thing.example").startswith("230")
    assert names(ftp) == {"anon_only.txt"}


@pytest.mark.parametrize("password", ["", "x", "anonymous@", "secret"])
def test_anonymous_accepts_any_password(users, start_server, connect, password):
    srv = start_server(users.root)
    ftp = connect(srv.port)
    assert ftp.sendcmd("USER anonymous").startswith("331")
    assert ftp.sendcmd(f"PASS {password}".rstrip()).startswith("230")
    assert names(ftp) == {"anon_only.txt"}


@pytest.mark.parametrize("command", ["USER", "USER "])
def test_empty_user_is_anonymous(users, start_server, connect, command):
    srv = start_server(users.root)
    ftp = connect(srv.port)
    resp = ftp.sendcmd(command)
    assert resp[:3] in ("230", "331"), resp
    if resp.startswith("331"):
        assert ftp.sendcmd("PASS guest").startswith("230")
    assert names(ftp) == {"anon_only.txt"}


def test_anonymous_refused_without_anonymous_folder(tree, start_server, connect):
    tree.user("alice", password="secret")
    srv = start_server(tree.root)
    ftp = connect(srv.port)
    failed_login(ftp, "anonymous", "guest@example.org")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.sendcmd("PWD")


def test_empty_user_refused_without_anonymous_folder(tree, start_server, connect):
    tree.user("alice", password="secret")
    srv = start_server(tree.root)
    ftp = connect(srv.port)
    assert ftp.sendcmd("USER").startswith("331")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.sendcmd("PASS guest")


INVALID_NAMES = ["../x", "a.b", "a b", ".xxftp", "alice/..", "%2e%2e", "bob\x00", "bob/", "/bob", "bob\\"]


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_invalid_user_names_are_refused_like_unknown_users(
        users, tmp_path, start_server, connect, name):
    # Give every such name a folder without a password file, so that a
    # server that accepted the name would log it in at once.
    (tmp_path / "x").mkdir(exist_ok=True)
    for folder in ("a.b", "a b", ".xxftp", "%2e%2e", "bob\\"):
        (users.root / folder).mkdir(exist_ok=True)
    srv = start_server(users.root)
    ftp = connect(srv.port)
    text = failed_login(ftp, name, "")
    assert text == wrong_password_text(srv.port, connect)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.sendcmd("PWD")


def test_user_name_with_nul_byte_over_raw_socket(users, start_server):
    """The same check without ftplib in the way: the bytes as sent."""
    srv = start_server(users.root)
    with socket.create_connection((HOST, srv.port), timeout=10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(b"USER b\x00ob\r\n")
        assert f.readline().startswith(b"331")
        sock.sendall(b"PASS \r\n")
        assert f.readline().startswith(b"530")
        sock.sendall(b"PWD\r\n")
        assert f.readline().startswith(b"530")


def test_password_file_whitespace_and_upper_case(tree, start_server, connect):
    home = tree.user("alice")
    digest = hashlib.md5(b"S3cret pass").hexdigest().upper()
    tree.xxftp(home, "password", f"  \n\t{digest}  \r\n\n")
    srv = start_server(tree.root)
    failed_login(connect(srv.port), "alice", "s3cret pass")
    ftp = connect(srv.port)
    assert ftp.sendcmd("USER alice").startswith("331")
    assert ftp.sendcmd("PASS S3cret pass").startswith("230")


def test_password_with_spaces_and_non_ascii(tree, start_server, connect):
    home = tree.user("alice")
    password = "pässwörd with  spaces "
    tree.xxftp(home, "password", hashlib.md5(password.encode()).hexdigest())
    srv = start_server(tree.root)
    ftp = connect(srv.port)
    ftp.encoding = "utf-8"
    assert ftp.sendcmd("USER alice").startswith("331")
    assert ftp.sendcmd(f"PASS {password}").startswith("230")


def _make_unreadable(path) -> None:
    """Make the password file unreadable for this process, even as root."""
    os.chmod(path, 0)
    try:
        with open(path, "rb"):
            readable = True
    except OSError:
        readable = False
    if readable:  # root ignores modes: a folder can't be read as a file
        os.remove(path)
        os.mkdir(path)


def test_unreadable_password_file_refuses_and_logs(tree, start_server, connect, caplog):
    home = tree.user("alice", password="secret")
    path = home / ".xxftp" / "password"
    _make_unreadable(path)
    caplog.set_level(logging.INFO, logger="xxftpd.accounts")
    srv = start_server(tree.root)
    try:
        failed_login(connect(srv.port), "alice", "secret")
        failed_login(connect(srv.port), "alice", "")
    finally:
        if path.is_file():
            os.chmod(path, 0o600)
    records = [r for r in caplog.records if r.name == "xxftpd.accounts"]
    assert records, "nothing logged about the unreadable password file"
    messages = [r.getMessage() for r in records]
    assert any(str(path) in m and "cannot read password file" in m for m in messages), messages
    assert all(r.levelno >= logging.WARNING for r in records)


def test_every_refusal_by_an_unreadable_password_file_is_logged(tree, start_server, connect, caplog):
    home = tree.user("alice", password="secret")
    path = home / ".xxftp" / "password"
    _make_unreadable(path)
    caplog.set_level(logging.INFO, logger="xxftpd.accounts")
    srv = start_server(tree.root, max_login_attempts=100)
    try:
        ftp = connect(srv.port)
        for _ in range(3):
            failed_login(ftp, "alice", "secret")
    finally:
        if path.is_file():
            os.chmod(path, 0o600)
    unreadable = [r for r in caplog.records if "cannot read password file" in r.getMessage()]
    assert len(unreadable) == 3, [r.getMessage() for r in caplog.records]


def test_password_file_edits_take_effect_at_the_next_login(tree, start_server, connect):
    """Logins read password files through a cache: every kind of edit must show."""
    home = tree.user("alice", password="secret")
    path = home / ".xxftp" / "password"
    srv = start_server(tree.root, max_login_attempts=100)
    ftp = connect(srv.port)
    ftp.login("alice", "secret")
    # rewritten in place, same inode and same length (an MD5 hex is always 32)
    with open(path, "r+") as f:
        f.write(hashlib.md5(b"changed").hexdigest())
    failed_login(ftp, "alice", "secret")
    assert ftp.login("alice", "changed").startswith("230")
    # replaced by another file (as `xxftpd passwd` does)
    tmp = path.with_name("password.new")
    tmp.write_text(hashlib.md5(b"again").hexdigest() + "\n")
    os.replace(tmp, path)
    failed_login(ftp, "alice", "changed")
    assert ftp.login("alice", "again").startswith("230")
    # removed: USER alone logs in; back again: a password is needed
    os.remove(path)
    assert ftp.sendcmd("USER alice").startswith("230")
    path.write_text(hashlib.md5(b"back").hexdigest() + "\n")
    failed_login(ftp, "alice", "again")
    assert ftp.login("alice", "back").startswith("230")


@pytest.mark.parametrize("content", [
    "garbage\n",
    "",
    "\n\n",
    hashlib.md5(b"secret").hexdigest() + "x",
    hashlib.md5(b"secret").hexdigest()[:-1],
    hashlib.md5(b"secret").hexdigest() + " " + hashlib.md5(b"other").hexdigest(),
    "secret",
])
def test_garbage_password_file_denies_every_password(tree, start_server, connect, content):
    home = tree.user("alice")
    tree.xxftp(home, "password", content)
    srv = start_server(tree.root, max_login_attempts=100)
    ftp = connect(srv.port)
    for password in ["", "secret", "garbage", "other", content.strip(), "anything"]:
        failed_login(ftp, "alice", password)


def test_garbage_password_file_is_logged(tree, start_server, connect, caplog):
    home = tree.user("alice")
    path = tree.xxftp(home, "password", "garbage\n")
    caplog.set_level(logging.INFO, logger="xxftpd.accounts")
    srv = start_server(tree.root)
    failed_login(connect(srv.port), "alice", "garbage")
    messages = [r.getMessage() for r in caplog.records if r.name == "xxftpd.accounts"]
    assert any(str(path) in m for m in messages), messages


def assert_closed(ftp: ftplib.FTP) -> None:
    """The server has closed the control connection."""
    ftp.sock.settimeout(5)
    with pytest.raises((EOFError, ConnectionError)):
        ftp.sendcmd("NOOP")
        ftp.sendcmd("NOOP")


def test_failed_logins_disconnect_after_max_attempts(users, start_server, connect):
    srv = start_server(users.root, max_login_attempts=3)
    ftp = connect(srv.port)
    first = failed_login(ftp, "alice", "bad1")
    second = failed_login(ftp, "alice", "bad2")
    assert not first.endswith("Disconnecting.")
    assert not second.endswith("Disconnecting.")
    last = failed_login(ftp, "alice", "bad3")
    assert last.endswith("Disconnecting."), last
    assert_closed(ftp)


def test_unknown_and_invalid_users_count_as_failed_logins(users, start_server, connect):
    srv = start_server(users.root, max_login_attempts=3)
    ftp = connect(srv.port)
    assert not failed_login(ftp, "nosuchuser", "x").endswith("Disconnecting.")
    assert not failed_login(ftp, "../x", "x").endswith("Disconnecting.")
    assert failed_login(ftp, "alice", "bad").endswith("Disconnecting.")
    assert_closed(ftp)


def test_good_login_resets_the_failure_count(users, start_server, connect):
    srv = start_server(users.root, max_login_attempts=3)
    ftp = connect(srv.port)
    failed_login(ftp, "alice", "bad1")
    failed_login(ftp, "alice", "bad2")
    assert ftp.sendcmd("USER alice").startswith("331")
    assert ftp.sendcmd("PASS secret").startswith("230")
    assert ftp.sendcmd("USER carol").startswith("331")
    assert ftp.sendcmd("PASS pw").startswith("230")
    assert names(ftp) == {"carol_only.txt"}


def test_default_max_login_attempts_is_three(users, start_server, connect):
    srv = start_server(users.root)
    ftp = connect(srv.port)
    failed_login(ftp, "alice", "bad1")
    failed_login(ftp, "alice", "bad2")
    assert failed_login(ftp, "alice", "bad3").endswith("Disconnecting.")
    assert_closed(ftp)


def test_second_user_flushes_previous_login(users, start_server, connect):
    srv = start_server(users.root)
    ftp = connect(srv.port, "alice", "secret")
    assert names(ftp) == {"alice_only.txt"}
    ftp.mkd("made_by_alice")
    ftp.cwd("made_by_alice")
    # A new USER forgets alice: nothing works until carol's PASS.
    assert ftp.sendcmd("USER carol").startswith("331")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.sendcmd("PWD")
    assert ftp.sendcmd("PASS pw").startswith("230")
    assert ftp.pwd() == "/"
    assert names(ftp) == {"carol_only.txt"}


def test_second_user_without_password_after_login(users, start_server, connect):
    srv = start_server(users.root)
    ftp = connect(srv.port, "alice", "secret")
    assert ftp.sendcmd("USER bob").startswith("230")
    assert ftp.pwd() == "/"
    assert names(ftp) == {"bob_only.txt"}


def test_second_user_with_wrong_password_leaves_nobody_logged_in(users, start_server, connect):
    srv = start_server(users.root)
    ftp = connect(srv.port, "alice", "secret")
    failed_login(ftp, "carol", "wrong")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.sendcmd("PWD")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        listing(ftp, "NLST")
