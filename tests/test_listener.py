"""The listener and file descriptors: the open files limit is raised at
start (and a too low one is one warning line); a flood of connections
beyond the descriptors the process may open is refused with 421, the
sessions already served go on (NOOP, RETR), and the listener never closes:
a new login works once the flood has gone."""

from __future__ import annotations

import ftplib
import io
import os
import resource
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import HOST, start_logged, stop_logged, wait_until

MiB = 1024 * 1024
# Flags that leave every limit but the descriptors out of the way.
NO_CAPS = ("--max-cons-per-ip", "0", "--max-unauthenticated", "0", "--max-unauthenticated-per-ip", "0",
           "--timeout", "600", "--login-timeout", "600")


def _limit(soft: int, hard: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return apply


def start(root, *extra: str, nofile: tuple[int, int] | None = None):
    return start_logged(root, *extra, **({"preexec_fn": _limit(*nofile)} if nofile else {}))


stop = stop_logged


def soft_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open files line")


@pytest.fixture
def users(tree):
    home = tree.user("alice", password="pw")
    (home / "big.bin").write_bytes(os.urandom(2 * MiB))
    return home


def login(port: int) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=20)
    ftp.login("alice", "pw")
    return ftp


def retr(ftp: ftplib.FTP) -> bytes:
    out = io.BytesIO()
    ftp.retrbinary("RETR big.bin", out.write)
    return out.getvalue()


def first_reply(sock: socket.socket) -> bytes:
    """The first reply line, b"" when closed without one."""
    data = b""
    try:
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def flood(port: int, count: int) -> tuple[list[socket.socket], list[bytes]]:
    def one(_):
        s = socket.create_connection((HOST, port), timeout=20)
        return s, first_reply(s)[:3]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(count)))
    return [s for s, _ in results], [code for _, code in results]


# --- start-up


def test_soft_limit_is_raised_to_the_hard_limit(tree, users):
    proc, port = start(tree.root, "--max-cons", "1000", nofile=(256, 4096))
    try:
        assert soft_limit(proc.pid) == 4096
        login(port).quit()
    finally:
        text = stop(proc)
    assert "open files limit" not in text


def test_too_low_a_hard_limit_is_one_warning_line(tree, users):
    proc, port = start(tree.root, "--max-cons", "1000", nofile=(256, 256))
    try:
        login(port).quit()
    finally:
        text = stop(proc)
    warnings = [line for line in text.splitlines() if "open files limit" in line]
    assert len(warnings) == 1, text
    assert "WARNING" in warnings[0] and "256" in warnings[0] and "--max-cons 1000" in warnings[0], warnings
    # enough for what is asked: no warning
    proc, port = start(tree.root, "--max-cons", "20", nofile=(256, 256))
    text = stop(proc)
    assert "open files limit" not in text, text


# --- running out


@pytest.mark.parametrize("model", [("--concurrency", "async"), ("--concurrency", "multi-thread"), ("--workers", "2")],
                         ids=["async", "multi-thread", "workers"])
def test_flood_past_the_descriptor_limit_keeps_serving(tree, users, model):
    """Under a hard limit of 256 with --max-cons 1000, 400 connections:
    those beyond the descriptors get 421 at once, a session logged in
    before goes on (NOOP, RETR) throughout, and a new login works once
    the flood has gone."""
    proc, port = start(tree.root, "--max-cons", "1000", *model, *NO_CAPS, nofile=(256, 256))
    socks: list[socket.socket] = []
    try:
        ftp = login(port)
        assert retr(ftp) == (users / "big.bin").read_bytes()
        count = 400 * (2 if "--workers" in model else 1)  # each worker has its own descriptors
        socks, codes = flood(port, count)
        counts = {c: codes.count(c) for c in set(codes)}
        assert codes.count(b"220") >= 50, counts  # about 214 (async), 107 (a loop per thread)
        assert codes.count(b"220") + codes.count(b"421") == count, counts  # nobody left hanging
        assert codes.count(b"421") >= 100, counts
        # the session served before the flood still is, transfers included
        ftp.voidcmd("NOOP")
        assert retr(ftp) == (users / "big.bin").read_bytes()
        ftp.voidcmd("NOOP")
        # the connections that got in are served too
        served = [s for s, c in zip(socks, codes) if c == b"220"]
        for s in served[:20]:
            s.sendall(b"NOOP\r\n")
        assert [first_reply(s)[:3] for s in served[:20]] == [b"200"] * 20
        for s in socks:
            s.close()
        socks = []
        # once they have gone, a new login is served normally
        again = login(port)
        assert retr(again) == (users / "big.bin").read_bytes()
        again.quit()
        ftp.quit()
    finally:
        for s in socks:
            s.close()
        text = stop(proc)
    assert "refusing new connections" in text


@pytest.mark.parametrize("concurrency", ["async", "multi-thread"])
def test_accept_out_of_descriptors_refuses_pauses_and_listens_again(tree, users, concurrency):
    """accept() itself failing with EMFILE (the process's descriptors taken
    by something else: here its soft limit lowered from outside while it
    runs): the waiting clients get 421, the listener stays, the session
    served goes on, and new logins work once descriptors are free again."""
    proc, port = start(tree.root, "--concurrency", concurrency, *NO_CAPS, nofile=(256, 256))
    socks: list[socket.socket] = []
    try:
        ftp = login(port)
        time.sleep(0.2)  # the session's thread, and its loop, are up
        opened = len(os.listdir(f"/proc/{proc.pid}/fd"))
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (opened + 2, 256))
        socks, codes = flood(port, 40)
        counts = {c: codes.count(c) for c in set(codes)}
        assert codes.count(b"421") >= 30, counts
        assert codes.count(b"220") + codes.count(b"421") == 40, counts  # each answered, none left hanging
        ftp.voidcmd("NOOP")
        for s in socks:
            s.close()
        socks = []
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (256, 256))
        assert wait_until(lambda: _logs_in(port), timeout=10)
        ftp.voidcmd("NOOP")
        ftp.quit()
    finally:
        for s in socks:
            s.close()
        text = stop(proc)
    assert "refusing new connections: Too many open files" in text, text[-2000:]


def _logs_in(port: int) -> bool:
    try:
        ftp = login(port)
    except (OSError, ftplib.Error):
        return False
    ftp.quit()
    return True


def test_a_session_thread_without_a_descriptor_answers_421(tree, users):
    """multi-thread: the connection is accepted, but its thread can't open
    its IO loop (no descriptor left): the client gets 421 and is closed,
    not a greeting and then silence."""
    proc, port = start(tree.root, "--concurrency", "multi-thread", *NO_CAPS, nofile=(256, 256))
    try:
        ftp = login(port)
        time.sleep(0.2)
        # Room for the accepted socket but not for its thread's IO loop:
        # a 421 (the thread's; or the listener's, when the server's own
        # descriptors leave it none to accept with), then the close. A
        # descriptor the server had open while counting, closed just
        # after, may leave room for a whole session: that one must answer
        # NOOP (never a greeting and then silence), and the count is taken
        # again.
        refused = None
        for headroom in (1, 0, -1):  # tighter after a whole session got in
            opened = len(os.listdir(f"/proc/{proc.pid}/fd"))
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (opened + headroom, 256))
            s = socket.create_connection((HOST, port), timeout=3)
            got, closed = b"", False
            try:
                while chunk := s.recv(1000):  # (a command sent now could meet a closed socket: a reset)
                    got += chunk
                closed = True
            except ConnectionResetError:
                closed = True
            except socket.timeout:
                pass
            if closed:
                s.close()
                assert got.startswith(b"421 ") or b"\r\n421 " in got, got
                refused = got
                break
            assert got == b"220 xxftpd ready.\r\n", got  # a whole session: it must be alive
            s.sendall(b"NOOP\r\n")
            assert s.recv(1000).startswith(b"200"), "greeted, then never heard"
            s.close()
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (256, 256))
            time.sleep(0.5)  # that session's descriptors closed before the next count
        assert refused is not None, "no attempt was short of descriptors"
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (256, 256))
        ftp.voidcmd("NOOP")
        assert wait_until(lambda: _logs_in(port), timeout=10)
        ftp.quit()
    finally:
        stop(proc)
