"""Connections that never log in can't lock anyone out: the admission
table's rules on their own (no socket), then over real sockets in every
serving model: an address holding its maximum of idle and NOOP-sending
connections that never log in doesn't keep a legitimate client (from
another address or the same one) from logging in within a second, and
the time to log in is not extended by NOOP."""

from __future__ import annotations

import ftplib
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import HOST, start_logged, stop_logged
from xxftp_pyftpdlib.admission import DISPLACED, TOO_MANY, TOO_MANY_FROM_ADDRESS, Limits, Table

OTHER = "127.0.0.2"  # another client address: Linux routes all of 127/8 to loopback


# --- the rules


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_address_gives_up_its_oldest_stranger():
    table = Table(Limits(max_unauthenticated_per_ip=3))
    a = [table.admit("10.0.0.1")[0] for _ in range(3)]
    b = table.admit("10.0.0.2")[0]
    place, refusal, displaced = table.admit("10.0.0.1")
    assert refusal is None and displaced == [a[0]]
    assert a[0].leaving == DISPLACED and b.leaving is None
    assert len(table) == 4


def test_the_totals_displace_the_oldest_stranger_of_the_most_represented_address():
    table = Table(Limits(max_cons=5, max_unauthenticated=4))
    first = table.admit("10.0.0.9")[0]  # the oldest of all, but from a quiet address
    crowd = [table.admit("10.0.0.1")[0] for _ in range(3)]
    place, refusal, displaced = table.admit("10.0.0.2")
    assert displaced == [crowd[0]] and first.leaving is None
    # logged-in sessions are never displaced
    for p in crowd[1:] + [first, place]:
        p.logged_in()
    stranger = table.admit("10.0.0.3")[0]
    assert len(table) == 5
    assert table.admit("10.0.0.4")[2] == [stranger]
    table.admit("10.0.0.4")[0].logged_in()  # every place now a logged-in session: refused
    assert table.admit("10.0.0.5") == (None, TOO_MANY, [])


def test_an_address_full_of_logged_in_sessions_is_refused():
    table = Table(Limits(max_cons_per_ip=2))
    for _ in range(2):
        table.admit("10.0.0.1")[0].logged_in()
    assert table.admit("10.0.0.1") == (None, TOO_MANY_FROM_ADDRESS, [])
    assert table.admit("10.0.0.2")[1] is None


def test_the_time_to_log_in_is_not_extended_and_starts_over_after_rein():
    clock = Clock()
    table = Table(Limits(login_timeout=30), clock=clock)
    idle, busy = table.admit("10.0.0.1")[0], table.admit("10.0.0.1")[0]
    busy.logged_in()
    clock.now += 29
    assert table.overdue() == []
    clock.now += 1
    assert table.overdue() == [idle] and idle.leaving == "Login timed out."
    busy.logged_out()  # REIN
    clock.now += 29.9
    assert table.overdue() == []
    clock.now += 0.1
    assert table.overdue() == [busy]
    assert len(table) == 0


def test_places_of_ended_processes_are_forgotten():
    table = Table(Limits(max_cons=1), across_processes=True)
    place = table.admit("10.0.0.1")[0]
    place.logged_in()
    assert table.admit("10.0.0.1")[1] == TOO_MANY
    place.alive = lambda: False
    assert table.admit("10.0.0.1")[1] is None


# --- over real sockets

MODELS = {
    "async": ("--concurrency", "async"),
    "multi-thread": ("--concurrency", "multi-thread"),
    "multi-proc": ("--concurrency", "multi-proc"),
    "workers": ("--workers", "2"),
}


@pytest.fixture
def users(tree):
    tree.user("alice", password="pw")
    tree.user("bob")  # no password: USER alone logs in
    return tree


def start(root, *extra: str):
    return start_logged(root, *extra, host="0.0.0.0")


stop = stop_logged


class Squatter(threading.Thread):
    """Keeps ``count`` connections from ``source`` that never log in:
    half idle, half sending NOOP every half second; any that is closed is
    opened again at once (an attacker holding its maximum)."""

    def __init__(self, port: int, count: int, source: str = HOST) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.source = port, count, source
        self.socks: dict[socket.socket, int] = {}
        self.replies: list[bytes] = []
        self.opened = 0
        self.ready = threading.Event()
        self._done = threading.Event()

    def _open(self, n: int) -> None:
        try:
            s = socket.create_connection((HOST, self.port), timeout=5, source_address=(self.source, 0))
        except OSError:
            return
        s.setblocking(False)
        self.socks[s] = n
        self.opened += 1

    def run(self) -> None:
        for n in range(self.count):
            self._open(n)
            time.sleep(0.02)
        time.sleep(0.3)
        self.ready.set()
        next_noop = time.monotonic()
        while not self._done.is_set():
            readable, _, _ = select.select(list(self.socks), [], [], 0.1)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                self.replies.extend(line[:4] for line in data.split(b"\r\n") if line)
                if not data:  # closed: take the place again
                    n = self.socks.pop(s)
                    s.close()
                    self._open(n)
            if time.monotonic() >= next_noop:
                next_noop += 0.5
                for s, n in list(self.socks.items()):
                    if n % 2:
                        try:
                            s.send(b"NOOP\r\n")
                        except OSError:
                            pass

    def stop(self) -> None:
        self._done.set()
        self.join(10)
        for s in self.socks:
            s.close()


def timed_login(port: int, source: str) -> float:
    started = time.monotonic()
    ftp = ftplib.FTP(source_address=(source, 0))
    ftp.connect(HOST, port, timeout=10)
    ftp.login("alice", "pw")
    elapsed = time.monotonic() - started
    ftp.voidcmd("NOOP")
    ftp.quit()
    return elapsed


@pytest.mark.parametrize("model", list(MODELS))
def test_strangers_holding_every_place_do_not_lock_out_a_login(users, model):
    """--max-cons 10, everything else the defaults: one address keeps ten
    connections that never log in (idle or sending NOOP, reopened as soon
    as they are closed). Logins from another address and from the same
    one still succeed, each within a second. (With two workers, each has
    ten places: the address holds twenty.)"""
    proc, port = start(users.root, "--max-cons", "10", *MODELS[model])
    squatter = Squatter(port, 20 if model == "workers" else 10)  # the limits are each worker's
    squatter.start()
    try:
        assert squatter.ready.wait(15)
        times = []
        for source in (OTHER, HOST, OTHER, HOST):
            times.append(timed_login(port, source))
        assert max(times) < 1.0, times
        # the strangers displaced were told why
        time.sleep(0.3)
        assert b"421 " in squatter.replies, squatter.replies[:20]
    finally:
        squatter.stop()
        text = stop(proc)
    assert DISPLACED in text


@pytest.mark.parametrize("model", list(MODELS))
def test_noop_does_not_extend_the_time_to_log_in(users, model):
    proc, port = start(users.root, "--login-timeout", "2", *MODELS[model])
    try:
        logged_in = ftplib.FTP()
        logged_in.connect(HOST, port, timeout=10)
        logged_in.login("bob")
        stranger = socket.create_connection((HOST, port), timeout=10)
        stranger.recv(1000)  # 220
        started = time.monotonic()
        got = b""
        while time.monotonic() - started < 8:
            try:
                stranger.sendall(b"NOOP\r\n")
            except OSError:
                break
            stranger.settimeout(0.3)
            try:
                chunk = stranger.recv(1000)
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        elapsed = time.monotonic() - started
        assert b"421 Login timed out." in got, got
        assert 1.5 < elapsed < 5, elapsed
        # a logged-in session is not bound by it
        logged_in.voidcmd("NOOP")
        logged_in.quit()
    finally:
        stop(proc)


def test_rein_gives_a_session_the_time_to_log_in_again(users):
    proc, port = start(users.root, "--login-timeout", "1")
    try:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("bob")
        time.sleep(1.5)
        ftp.voidcmd("NOOP")  # logged in: no limit
        assert ftp.sendcmd("REIN").startswith("230")
        time.sleep(3)
        with pytest.raises((ftplib.error_temp, EOFError, OSError)) as err:
            ftp.voidcmd("NOOP")
        assert "421" in str(err.value) or isinstance(err.value, (EOFError, OSError))
    finally:
        stop(proc)


def test_a_stalled_tls_handshake_is_closed_at_the_time_to_log_in(users, tmp_path):
    """AUTH TLS, then no handshake: closed when the time to log in is up;
    a client that did log in over TLS stays."""
    from xxftp_pyftpdlib import certs
    cert, key = certs.self_signed(str(tmp_path / "tls"))
    proc, port = start(users.root, "--login-timeout", "2", "--tls", "--certfile", cert, "--keyfile", key)
    try:
        good = ftplib.FTP_TLS()
        good.connect(HOST, port, timeout=10)
        good.auth()
        good.login("bob")
        stalled = socket.create_connection((HOST, port), timeout=10)
        stalled.recv(1000)
        stalled.sendall(b"AUTH TLS\r\n")
        assert stalled.recv(1000).startswith(b"234")
        started = time.monotonic()
        stalled.settimeout(8)
        try:
            while stalled.recv(1000):
                pass
        except ConnectionResetError:
            pass
        assert 1.5 < time.monotonic() - started < 5
        time.sleep(1)
        good.voidcmd("NOOP")
        good.quit()
    finally:
        text = stop(proc)
    assert "Login timed out." in text


def test_the_limits_are_flags_and_config_keys(tmp_path):
    from xxftp_pyftpdlib.cli import build_parser, load_config
    from xxftp_pyftpdlib.server import Options
    parser = build_parser()
    defaults = parser.parse_args([])
    assert (defaults.max_cons_per_ip, defaults.max_unauthenticated, defaults.max_unauthenticated_per_ip,
            defaults.login_timeout) == (Options.max_cons_per_ip, Options.max_unauthenticated,
                                        Options.max_unauthenticated_per_ip, Options.login_timeout) == (32, 50, 16, 30)
    path = tmp_path / "x.toml"
    path.write_text("max-unauthenticated = 7\nmax_unauthenticated_per_ip = 3\nlogin_timeout = 12\n")
    parser.set_defaults(**load_config(parser, str(path)))
    args = parser.parse_args(["--login-timeout", "9"])
    assert (args.max_unauthenticated, args.max_unauthenticated_per_ip, args.login_timeout) == (7, 3, 9)
    for bad in (["--login-timeout", "-1"], ["--max-unauthenticated", "x"]):
        done = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", *bad], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 2 and done.stderr.startswith("xxftpd: error:") and "Traceback" not in done.stderr


def test_an_ipv6_64_counts_as_one_address():
    """A host holds a whole IPv6 /64: its addresses share the per-address
    limits (and an IPv4-mapped address is its IPv4 one)."""
    table = Table(Limits(max_cons_per_ip=2))
    first, _, _ = table.admit("2001:db8:1:2::1")
    second, _, _ = table.admit("2001:db8:1:2:ffff::9")
    third, refusal, displaced = table.admit("2001:db8:1:2:abcd::5")
    assert first is not None and second is not None
    assert third is not None and displaced == [first]  # its own oldest stranger made room
    other, refusal, displaced = table.admit("2001:db8:1:3::1")
    assert other is not None and displaced == [] and refusal is None
    mapped = Table(Limits(max_cons_per_ip=1))
    mapped.admit("10.0.0.1")
    _, _, displaced = mapped.admit("::ffff:10.0.0.1")
    assert len(displaced) == 1
