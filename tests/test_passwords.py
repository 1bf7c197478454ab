"""Password formats, the passwd command, hash upgrades, and slow hashes
kept off the event loop."""

from __future__ import annotations

import ftplib
import os
import pty
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import HOST, download
from xxftp_pyftpdlib import passwords


def xxftpd(*args, **kw):
    return subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", *args], capture_output=True,
                          text=True, timeout=30, **kw)


def test_formats():
    modern = passwords.scrypt_hash("s3cret")
    assert modern.startswith("$scrypt$ln=14,r=8,p=1$") and passwords.kind(modern) == "scrypt"
    assert passwords.verify(modern, "s3cret") and not passwords.verify(modern, "s3cret ")
    assert passwords.scrypt_hash("s3cret") != modern  # salted
    legacy = passwords.md5_hex("s3cret")
    assert passwords.verify(f"  {legacy.upper()}\n", "s3cret")
    for junk in ("", "plain text", "$scrypt$ln=40,r=8,p=1$AAAA$AAAA", "$scrypt$ln=14,r=8,p=1$!!$AAAA", legacy[:-1]):
        assert not passwords.verify(junk, "s3cret")


@pytest.mark.parametrize("stored", [
    None, "", "garbage", passwords.md5_hex("pw"), passwords.md5_hex("other"), passwords.scrypt_hash("pw"),
    passwords.scrypt_hash("other"), "$scrypt$ln=14,r=8,p=1$!!$YQ==", "$scrypt$ln=14,r=8,p=1$YQ==$YQ==",
])
def test_a_login_check_costs_one_modern_hash_whatever_is_stored(stored, monkeypatch):
    """No such user, MD5, garbage, scrypt that can't be decoded: exactly
    one scrypt of the default parameters each, so the time tells nothing."""
    calls = []
    real = passwords._scrypt

    def counted(password, salt, ln, r, p, size):
        calls.append((ln, r, p, size))
        return real(password, salt, ln, r, p, size)

    monkeypatch.setattr(passwords, "_scrypt", counted)
    result = passwords.check(stored, "pw")
    assert calls == [(passwords.LN, passwords.R, passwords.P, 32)]
    assert result is (stored is not None and passwords.verify(stored, "pw"))
    calls.clear()  # a tree of legacy hashes only: no scrypt, unless one is stored
    assert passwords.check(stored, "pw", modern=False) is result
    stored_kind = passwords.kind(stored.strip()) if stored is not None else None
    assert len(calls) == (1 if stored_kind == "scrypt" else 0)


@pytest.mark.parametrize("fmt", ["md5", "scrypt"])
def test_login_with_each_format(tree, start_server, connect, fmt):
    home = tree.user("alice")
    stored = passwords.md5_hex("pw") if fmt == "md5" else passwords.scrypt_hash("pw")
    tree.xxftp(home, "password", stored + "\n")
    srv = start_server(tree.root)
    assert connect(srv.port, "alice", "pw").voidcmd("NOOP").startswith("200")
    ftp = connect(srv.port)
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.login("alice", "wrong")


def test_upgrade_hashes_on_login(tree, start_server, connect):
    home = tree.user("alice", password="pw")
    path = home / ".xxftp/password"
    srv = start_server(tree.root)
    srv.server.handler.authorizer.accounts.upgrade_hashes = True
    connect(srv.port, "alice", "pw")
    stored = path.read_text()
    assert passwords.kind(stored) == "scrypt" and passwords.verify(stored, "pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    connect(srv.port, "alice", "pw")  # still logs in, nothing rewritten again
    assert path.read_text() == stored
    with pytest.raises(ftplib.error_perm, match="^530"):
        connect(srv.port).login("alice", "nope")


def test_passwd_stdin_writes_modern_hash_atomically(tree):
    home = tree.user("alice", password="old")
    done = xxftpd("--root", str(tree.root), "passwd", "alice", "--stdin", input="new secret\n")
    assert done.returncode == 0, done.stderr
    path = home / ".xxftp/password"
    assert passwords.verify(path.read_text(), "new secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [n for n in os.listdir(home / ".xxftp")] == ["password"]  # no temporary left
    done = xxftpd("--root", str(tree.root), "passwd", "alice", "--stdin", "--md5", input="legacy\n")
    assert path.read_text().strip() == passwords.md5_hex("legacy")
    for args, needle in ((["passwd", "nobody", "--stdin"], "no such user"),
                         (["passwd", "../alice", "--stdin"], "no such user"),
                         (["passwd", "alice", "--stdin"], "empty password"),
                         (["passwd", "alice"], "no terminal")):
        done = xxftpd("--root", str(tree.root), *args, input="\n")
        assert done.returncode != 0 and needle in done.stderr and "Traceback" not in done.stderr
    assert path.read_text().strip() == passwords.md5_hex("legacy")  # nothing changed


def _run_on_pty(argv, answers):
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execvp(argv[0], argv)
    output = b""
    for answer in answers:
        while b":" not in output.split(b"\n")[-1]:
            output += os.read(fd, 1024)
        os.write(fd, answer.encode() + b"\n")
        output += b"\n"
    try:
        while True:
            chunk = os.read(fd, 1024)
            if not chunk:
                break
            output += chunk
    except OSError:
        pass
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_passwd_asks_twice_on_a_terminal(tree):
    home = tree.user("alice", password="old")
    argv = [sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(tree.root), "passwd", "alice"]
    code, output = _run_on_pty(argv, ["tty pass", "tty pass"])
    assert code == 0, output
    assert passwords.verify((home / ".xxftp/password").read_text(), "tty pass")
    code, output = _run_on_pty(argv, ["one", "other"])
    assert code != 0 and "differ" in output
    assert passwords.verify((home / ".xxftp/password").read_text(), "tty pass")


def test_slow_logins_do_not_stall_transfers(tree, start_server, connect):
    """100 scrypt logins at once while a download runs: the loop keeps serving."""
    home = tree.user("alice")
    tree.xxftp(home, "password", passwords.scrypt_hash("pw"))
    (home / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    srv = start_server(tree.root)
    ftp = connect(srv.port, "alice", "pw")
    stalls = []

    def probe():  # NOOP round trips on a logged-in session during the logins
        for _ in range(20):
            t = time.perf_counter()
            ftp.voidcmd("NOOP")
            stalls.append(time.perf_counter() - t)
            time.sleep(0.02)

    def login(i):
        c = ftplib.FTP()
        c.connect(HOST, srv.port, timeout=60)
        try:
            c.login("alice", "pw" if i % 2 else "wrong")
        except (ftplib.error_perm, ftplib.error_temp) as err:  # 530, or 421 beyond --max-login-checks
            assert str(err)[:3] in ("530", "421"), err
        c.close()

    threads = [threading.Thread(target=login, args=(i,)) for i in range(100)]
    prober = threading.Thread(target=probe)
    for t in threads:
        t.start()
    prober.start()
    for t in threads + [prober]:
        t.join(120)
    # one scrypt takes ~50 ms; 50 of them on the loop would stall a NOOP for seconds
    assert max(stalls) < 0.5, max(stalls)
    assert download(ftp, "big.bin") == (home / "big.bin").read_bytes()
