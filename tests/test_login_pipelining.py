"""Lines sent behind a PASS, over real sockets: they wait for its answer,
never run after a failed login or past an AUTH TLS, and a session
displaced or out of time while its password is checked is not logged in."""

from __future__ import annotations

import socket
import time

import pytest

from conftest import HOST, wait_until
from test_login_checks import Raw, hashes  # noqa: F401 (a fixture)

from xxftp_pyftpdlib.handler import NOT_RUN_AFTER_FAILED_LOGIN


@pytest.fixture
def homes(tree):
    tree.user("alice", password="pw")
    tree.file("alice/victim.txt", b"keep me")
    return tree


def replies(raw: Raw, count: int) -> list[str]:
    return [raw.reply() for _ in range(count)]


def test_guesses_sent_behind_a_failed_pass_are_answered_not_run(homes, start_server):
    """200 USER/PASS pairs in one packet, the right password last: the
    first PASS fails, every later line is answered 530 without running,
    and no guess logs in."""
    srv = start_server(homes.root)
    raw = Raw(srv.port)
    try:
        guesses = b"".join(b"USER alice\r\nPASS guess%d\r\n" % i for i in range(199)) + b"USER alice\r\nPASS pw\r\n"
        raw.sock.sendall(b"USER alice\r\nPASS wrong\r\n" + guesses + b"DELE victim.txt\r\n")
        got = replies(raw, 2 + 400 + 1)
    finally:
        raw.close()
    assert got[0].startswith("331 ") and got[1].startswith("530 "), got[:2]
    assert got[2:] == [NOT_RUN_AFTER_FAILED_LOGIN] * 401, sorted(set(got[2:]))
    assert (homes.root / "alice" / "victim.txt").read_bytes() == b"keep me"


def test_a_good_login_runs_what_came_with_it_in_order(homes, start_server):
    srv = start_server(homes.root)
    raw = Raw(srv.port)
    try:
        raw.sock.sendall(b"USER alice\r\nPASS pw\r\nPWD\r\nNOOP\r\n")
        got = replies(raw, 4)
    finally:
        raw.close()
    assert [line[:4] for line in got] == ["331 ", "230 ", "257 ", "200 "], got


def test_nothing_sent_with_auth_tls_behind_a_pass_runs(homes, start_server, pair):
    """USER, PASS, AUTH TLS and DELE in one packet: the DELE arrived before
    the handshake and is discarded with the rest of the plaintext."""
    from xxftp_pyftpdlib import XxftpTLSHandler
    cert, key = pair
    srv = start_server(homes.root, handler_base=XxftpTLSHandler, certfile=cert, keyfile=key, ssl_context=None)
    raw = Raw(srv.port)
    try:
        raw.sock.sendall(b"USER alice\r\nPASS pw\r\nAUTH TLS\r\nDELE victim.txt\r\n")
        got = replies(raw, 3)
        raw.sock.settimeout(1.5)
        with pytest.raises((socket.timeout, TimeoutError)):
            raw.file.readline()  # nothing more in the clear: the DELE neither ran nor was answered
    finally:
        raw.close()
    assert [line[:4] for line in got] == ["331 ", "230 ", "234 "], got
    time.sleep(0.3)
    assert (homes.root / "alice" / "victim.txt").read_bytes() == b"keep me"


@pytest.fixture
def pair(tmp_path_factory):
    from xxftp_pyftpdlib import certs
    return certs.self_signed(str(tmp_path_factory.mktemp("tls")))


def test_out_of_time_while_the_password_is_checked_means_no_login(homes, start_server, hashes):  # noqa: F811
    """The time to log in runs out while the check waits: the answer is the
    421, not a 230, and the DELE sent with PASS never runs."""
    hashes.hold()
    srv = start_server(homes.root, login_timeout=1)
    raw = Raw(srv.port)
    try:
        raw.sock.sendall(b"USER alice\r\nPASS pw\r\nDELE victim.txt\r\n")
        assert raw.reply().startswith("331 ")
        assert wait_until(lambda: len(hashes.started) >= 1)
        time.sleep(2.5)  # past the time to log in (swept once a second)
        hashes.release()
        got = raw.reply()
        rest = raw.file.read()  # then the connection ends
    finally:
        hashes.release()
        raw.close()
    assert got.startswith("421 ") and "Login timed out" in got, got
    assert b"230" not in rest and b"250" not in rest, rest
    assert (homes.root / "alice" / "victim.txt").read_bytes() == b"keep me"


def test_a_login_being_checked_is_not_the_one_displaced(homes, start_server, hashes):  # noqa: F811
    """Two places for strangers: alice's password is being checked when two
    more connect. The newcomers displace the idle stranger and then each
    other, never the login in progress, which then succeeds."""
    hashes.hold()
    srv = start_server(homes.root, max_unauthenticated=2)
    alice = Raw(srv.port)
    others = []
    try:
        alice.sock.sendall(b"USER alice\r\nPASS pw\r\n")
        assert alice.reply().startswith("331 ")
        assert wait_until(lambda: len(hashes.started) >= 1)
        for _ in range(3):
            others.append(Raw(srv.port))
            time.sleep(0.1)
        hashes.release()
        got = alice.reply()
        displaced = [raw.reply() for raw in others[:2]]
    finally:
        hashes.release()
        for raw in [alice, *others]:
            raw.close()
    assert got.startswith("230 "), got
    assert all(line.startswith("421 ") for line in displaced), displaced


def test_a_check_that_breaks_refuses_the_login_and_keeps_the_session(homes, start_server, monkeypatch, caplog):
    """A password check that raises (here: the hash runs out of memory) is
    a refused login with one log line, not a traceback and a lost session."""
    from xxftp_pyftpdlib import passwords

    def broken(*args, **kwargs):
        raise MemoryError("no room for the hash")

    monkeypatch.setattr(passwords, "check", broken)
    srv = start_server(homes.root)
    raw = Raw(srv.port)
    try:
        assert raw.cmd("USER alice").startswith("331 ")
        assert raw.cmd("PASS pw").startswith("530 ")
        assert raw.cmd("NOOP").startswith("200 ")
    finally:
        raw.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "the check failed: MemoryError" in text, text[-2000:]
    assert "Traceback" not in caplog.text
