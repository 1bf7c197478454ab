"""Limits: connection caps, many idle connections, idle and stalled
timeouts, and clients that vanish mid-transfer (no leaked file handle,
quota reservation or temporary file)."""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import resource
import signal
import threading
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import HOST, start_logged, stop_logged, temporaries
from test_hostile_protocol import Raw, read_all, wait_until
from xxftp_pyftpdlib import XxftpHandler
from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.datachannel import XxftpDTPHandler
from xxftp_pyftpdlib.ledger.scan import scan

KiB = 1024
MiB = 1024 * KiB


def start(root, *extra):
    # every client here is 127.0.0.1: the per-address limits only where a test sets them
    return start_logged(root, "--max-cons-per-ip", "0", "--max-unauthenticated-per-ip", "0", *extra)


def stop(proc) -> None:
    stop_logged(proc)


def greeting(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def ledger(folder) -> dict:
    with open(os.path.join(folder, ".xxftp", "ledger")) as f:
        return json.load(f)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def users(tree):
    home = tree.user("alice", password="pw", size="64M")
    (home / "big.bin").write_bytes(os.urandom(2 * MiB))
    tree.user("bob")
    return home


# --- connection caps


def hold(port: int, n: int) -> tuple[list[socket.socket], list[bytes]]:
    """n connections, each logged in (bob needs no password) once greeted:
    a logged-in session keeps its place (one that never logs in may be
    displaced by a newcomer, see test_admission.py)."""
    socks, greetings = [], []
    for _ in range(n):
        s = socket.create_connection((HOST, port), timeout=10)
        socks.append(s)
        greetings.append(greeting(s)[:4])
        if greetings[-1] == b"220 ":
            s.sendall(b"USER bob\r\n")
            assert greeting(s).startswith(b"230 ")
    return socks, greetings


@pytest.mark.parametrize("concurrency", ["async", "multi-thread"])
def test_max_cons_holds_exactly_n_connections(tree, users, concurrency):
    """--max-cons 5: five logged-in clients are served, the sixth gets 421."""
    proc, port = start(tree.root, "--max-cons", "5", "--concurrency", concurrency)
    socks = []
    try:
        socks, greetings = hold(port, 5)
        extra = socket.create_connection((HOST, port), timeout=10)
        socks.append(extra)
        refused = greeting(extra)
        assert greetings == [b"220 "] * 5, f"--max-cons 5 served {greetings.count(b'220 ')} of 5 clients"
        assert refused.startswith(b"421 "), f"the 6th client got {refused!r}"
        assert extra.recv(100) == b""  # and was closed
        socks.pop().close()
        socks.pop().close()  # one place free again
        time.sleep(0.3)
        again = socket.create_connection((HOST, port), timeout=10)
        socks.append(again)
        assert greeting(again).startswith(b"220 ")
    finally:
        for s in socks:
            s.close()
        stop(proc)


def test_max_cons_per_ip(tree, users):
    proc, port = start(tree.root, "--max-cons-per-ip", "3")
    socks = []
    try:
        socks, greetings = hold(port, 3)
        assert greetings == [b"220 "] * 3
        extra = socket.create_connection((HOST, port), timeout=10)
        socks.append(extra)
        assert greeting(extra).startswith(b"421 ")
        assert extra.recv(100) == b""
        # the three that got in are fully served
        for s in socks[:3]:
            s.sendall(b"USER alice\r\nPASS pw\r\nNOOP\r\n")
        for s in socks[:3]:
            got = b""
            while got.count(b"\r\n") < 3:
                chunk = s.recv(1000)
                assert chunk, got
                got += chunk
            assert [line[:3] for line in got.split(b"\r\n")[:3]] == [b"331", b"230", b"200"], got
    finally:
        for s in socks:
            s.close()
        stop(proc)


def test_a_thousand_idle_connections(tree, users):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2400
    if soft < need:
        assert hard == resource.RLIM_INFINITY or hard >= need, f"RLIMIT_NOFILE hard limit {hard} < {need}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # inherited by the server process
    # every limit on connections that have not logged in off: this is about holding them
    proc, port = start(tree.root, "--max-cons", "1100", "--timeout", "600", "--max-cons-per-ip", "0",
                       "--max-unauthenticated", "0", "--max-unauthenticated-per-ip", "0", "--login-timeout", "0")
    socks = []
    try:
        with ThreadPoolExecutor(16) as pool:
            def one(_):
                s = socket.create_connection((HOST, port), timeout=30)
                return s, greeting(s)
            results = list(pool.map(one, range(1000)))
        socks = [s for s, _ in results]
        codes = [g[:3] for _, g in results]
        assert codes.count(b"220") == 1000, {c: codes.count(c) for c in set(codes)}
        assert fd_count(proc.pid) >= 1000
        # a working client still gets full service next to them
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        out = io.BytesIO()
        ftp.retrbinary("RETR big.bin", out.write)
        assert out.getvalue() == (users / "big.bin").read_bytes()
        ftp.quit()
        # and every idle one is still there
        for s in socks:
            s.sendall(b"NOOP\r\n")
        answers = [greeting(s)[:3] for s in socks]
        assert answers.count(b"200") == 1000, {c: answers.count(c) for c in set(answers)}
    finally:
        for s in socks:
            s.close()
        stop(proc)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- timeouts


def test_idle_control_connection_times_out(tree, users):
    proc, port = start(tree.root, "--timeout", "1")
    try:
        idle = Raw(port)
        logged = Raw(port)
        logged.login("alice", "pw")
        started = time.monotonic()
        for raw in (idle, logged):
            reply = raw.reply()
            assert reply is not None and reply.code == 421, reply
            assert raw.at_eof()
        assert time.monotonic() - started < 5
        # a busy client is not cut off: a command resets the clock
        busy = Raw(port)
        for _ in range(6):
            time.sleep(0.4)
            assert busy.ok("NOOP", 200)
        busy.close()
    finally:
        stop(proc)


class QuickDTP(XxftpDTPHandler):
    timeout = 1


@pytest.fixture
def quick(tree, users, start_server):
    """An in-process server whose data connections time out after 1 s of no progress
    (--data-timeout 1 --passive-timeout 1 on the command; the defaults are 300 s and 30 s)."""
    quick_passive = type("QuickPassive", (XxftpHandler.passive_dtp,), {"timeout": 1})
    return start_server(tree.root, dtp_handler=QuickDTP, passive_dtp=quick_passive)


def stalled_session(port) -> Raw:
    raw = Raw(port)
    raw.login("alice", "pw")
    raw.ok("TYPE I", 200)
    return raw


def test_stalled_download_is_closed(tree, users, quick):
    home = users
    with open(home / "huge.bin", "wb") as f:
        f.truncate(64 * MiB)  # more than any socket buffers hold
    raw = stalled_session(quick.port)
    reply = raw.ok("PASV", 227)
    numbers = [int(n) for n in reply.text.split(b"(")[1].split(b")")[0].split(b",")]
    data = socket.socket()
    data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    data.connect((HOST, numbers[4] * 256 + numbers[5]))
    started = time.monotonic()
    assert raw.ok("RETR huge.bin", 125, 150)
    reply = raw.reply()  # the client never reads the data
    assert reply is not None and reply.code == 426 and b"timed out" in reply.text, reply
    assert time.monotonic() - started < 6
    data.settimeout(5)
    received = read_all(data)
    assert len(received) < 64 * MiB
    assert raw.ok("NOOP", 200)  # the transfer ended, not the session


def test_stalled_upload_is_closed_and_rolled_back(tree, users, quick):
    home = users
    ftp = ftplib.FTP()
    ftp.connect(HOST, quick.port, timeout=10)
    ftp.login("alice", "pw")
    ftp.storbinary("STOR keep.bin", io.BytesIO(b"old content"))  # by FTP, so the ledger knows it
    ftp.quit()
    before = ledger(home)["used"]
    for target in ("new.bin", "keep.bin"):
        raw = stalled_session(quick.port)
        data = raw.pasv()
        started = time.monotonic()
        assert raw.ok(f"STOR {target}", 125, 150)
        data.sendall(os.urandom(300 * KiB))  # then nothing, and no close
        reply = raw.reply()
        assert reply is not None and reply.code == 426, reply
        assert time.monotonic() - started < 6
        data.close()
        assert raw.ok("NOOP", 200)  # the transfer ended, not the session
        raw.ok("QUIT", 221)
    assert not (home / "new.bin").exists()
    assert (home / "keep.bin").read_bytes() == b"old content"
    assert wait_until(lambda: not temporaries(tree.root)), temporaries(tree.root)
    state = ledger(home)
    assert state["pending"] == {} and state["intents"] == []
    assert state["used"] == scan(str(home), ConfigStore(str(tree.root))) == before


def test_passive_listener_nobody_connects_to_times_out(tree, users, quick):
    raw = stalled_session(quick.port)
    started = time.monotonic()
    raw.ok("PASV", 227)
    raw.ok("STOR never.bin", 150)
    reply = raw.reply()
    assert reply is not None and reply.code == 425 and b"No data connection" in reply.text, reply  # its own reply
    assert time.monotonic() - started < 5
    assert raw.ok("NOOP", 200)  # the session itself goes on
    raw.ok("QUIT", 221)
    assert raw.at_eof()
    assert not (users / "never.bin").exists()
    assert wait_until(lambda: not temporaries(tree.root)), temporaries(tree.root)
    assert ledger(users)["pending"] == {}


# --- clients that vanish mid-transfer


def _pasv_port(raw: Raw) -> int:
    reply = raw.ok("PASV", 227)
    numbers = [int(n) for n in reply.text.split(b"(")[1].split(b")")[0].split(b",")]
    return numbers[4] * 256 + numbers[5]


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


HOW = ("fin-both", "rst-both", "control-only", "data-only")


def abort_once(port: int, i: int, payload: bytes) -> str:
    """One transfer broken off in one of several ways.

    Returns what was done, or ``disturbed: ...`` if the server failed this
    session *before* the client broke anything (that is the server's fault).
    """
    upload = i % 2 == 1
    how = HOW[(i // 2) % 4]
    try:
        raw = Raw(port)
        raw.login("alice", "pw")
        raw.ok("TYPE I", 200)
        data = socket.create_connection((HOST, _pasv_port(raw)), timeout=15)
        if upload:
            raw.ok(f"STOR {'over' if i % 4 == 1 else 'up'}-{i}.bin", 125, 150)
            data.sendall(payload)
        else:
            raw.ok("RETR big.bin", 125, 150)
            data.recv(32 * KiB)
    except (AssertionError, OSError) as err:
        return f"disturbed: {'STOR' if upload else 'RETR'} #{i}: {err!r}"
    if how == "fin-both":
        data.close()
        raw.sock.close()
    elif how == "rst-both":
        _rst(data)
        _rst(raw.sock)
    elif how == "control-only":
        _rst(raw.sock)
        time.sleep(0.05)
        data.close()
    else:  # the data connection drops; the client waits a little for the reply, then leaves
        _rst(data)
        raw.sock.settimeout(3)
        try:
            raw.reply()
        except (AssertionError, OSError):
            pass
        raw.sock.close()
    return f"{'STOR' if upload else 'RETR'} {how}"


OLD = b"old version " * 100


def run_aborts(port: int, count: int = 200, workers: int = 8) -> tuple[list[str], dict[int, bytes]]:
    payloads = {i: os.urandom(96 * KiB) for i in range(count)}
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda i: abort_once(port, i, payloads[i]), range(count)))
    return done, payloads


def test_two_hundred_aborted_transfers_leak_nothing(tree, users):
    home = users
    proc, port = start(tree.root)
    try:
        # warm up with one full session (so lazily opened things are open), and
        # store the files that some aborted uploads try to overwrite
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        for i in range(1, 200, 4):
            ftp.storbinary(f"STOR over-{i}.bin", io.BytesIO(OLD))
        ftp.retrbinary("RETR over-1.bin", lambda b: None)
        ftp.quit()
        time.sleep(0.3)
        baseline = fd_count(proc.pid)
        done, payloads = run_aborts(port)
        aborted = [d for d in done if not d.startswith("disturbed")]
        assert len(aborted) >= 150 and len(set(aborted)) == 8, done  # every kind of abort happened
        assert wait_until(lambda: fd_count(proc.pid) <= baseline, 15), \
            f"{fd_count(proc.pid) - baseline} file descriptors leaked: " \
            f"{[os.readlink(f'/proc/{proc.pid}/fd/{fd}') for fd in os.listdir(f'/proc/{proc.pid}/fd')]}"
        open_files = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")]
        state_folder = str(tree.root / ".xxftpd")  # the status socket's folder, open while the server runs
        assert not [p for p in open_files if p.startswith(str(tree.root)) and p != state_folder], open_files
        assert wait_until(lambda: not temporaries(tree.root), 10), temporaries(tree.root)
        state = ledger(home)
        assert state["pending"] == {} and state["intents"] == [], state
        assert state["used"] == scan(str(home), ConfigStore(str(tree.root)))
        # a broken upload leaves the old file or nothing; a client that closes
        # its data connection (FIN) has, to FTP, finished its upload: that one
        # may stand, but never as anything but a prefix of what was sent
        for i in range(1, 200, 2):
            path = home / f"{'over' if i % 4 == 1 else 'up'}-{i}.bin"
            got = path.read_bytes() if path.exists() else None
            assert got in (None, OLD) or payloads[i].startswith(got), (path.name, len(got))
        # and the server still serves
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        out = io.BytesIO()
        ftp.retrbinary("RETR big.bin", out.write)
        assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256((home / "big.bin").read_bytes()).digest()
        ftp.quit()
    finally:
        stop(proc)


def test_aborts_do_not_disturb_other_sessions(tree, users):
    """While 300 transfers are broken off, every other session (the ones
    about to abort, before they do, and a steady client) is served normally."""
    proc, port = start(tree.root)
    errors: list[str] = []
    rounds = [0]
    halt = threading.Event()

    def steady():
        while not halt.is_set():
            try:
                ftp = ftplib.FTP()
                ftp.connect(HOST, port, timeout=10)
                ftp.login("alice", "pw")
                for _ in range(3):
                    ftp.voidcmd("NOOP")
                    out = io.BytesIO()
                    ftp.retrbinary("RETR big.bin", out.write)
                    assert out.getvalue() == (users / "big.bin").read_bytes()
                    rounds[0] += 1
                ftp.quit()
            except (AssertionError, OSError, ftplib.Error) as err:
                errors.append(repr(err))

    watcher = threading.Thread(target=steady, daemon=True)
    try:
        watcher.start()
        done, _ = run_aborts(port, 300, workers=16)
        halt.set()
        watcher.join(30)
        disturbed = [d for d in done if d.startswith("disturbed")]
        assert rounds[0] > 0
        assert disturbed == [] and errors == [], \
            f"{len(disturbed)} of 300 sessions and {len(errors)} steady rounds failed: {disturbed[:4]} {errors[:4]}"
    finally:
        halt.set()
        stop(proc)


# --- a reset upload is an abort (it was once committed as complete)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "overwrite"])
def test_upload_reset_by_the_client_is_not_committed(tree, users, start_server, existing):
    """A TCP reset on the data connection is an abort, not an end of file:
    in atomic mode the upload must not replace or create anything."""
    home = users
    srv = start_server(tree.root)
    if existing:
        ftp = ftplib.FTP()
        ftp.connect(HOST, srv.port, timeout=10)
        ftp.login("alice", "pw")
        ftp.storbinary("STOR victim.bin", io.BytesIO(OLD))
        ftp.quit()
    raw = Raw(srv.port)
    raw.login("alice", "pw")
    raw.ok("TYPE I", 200)
    data = socket.create_connection((HOST, _pasv_port(raw)), timeout=15)
    time.sleep(0.2)  # the server has accepted the data connection
    assert raw.ok("STOR victim.bin", 125)
    data.sendall(os.urandom(256 * KiB))
    time.sleep(0.3)  # the server has read it
    _rst(data)
    reply = raw.reply()
    after = (home / "victim.bin").read_bytes() if (home / "victim.bin").exists() else None
    assert reply is not None and reply.code >= 400, f"an upload reset by the client was answered {reply!r}"
    assert after == (OLD if existing else None), f"the reset upload left {None if after is None else len(after)} bytes"
    assert not temporaries(tree.root)


# --- a quota refusal after the client vanished (it once killed the server)


def test_quota_refusal_after_the_control_connection_died_keeps_the_server_alive(tree, users):
    """The client fills its quota and resets its control connection; the
    server meets both in one IO-loop turn. It must survive (it used to die:
    the 552 reply closed the dead session, then the transfer log line looked
    up the session's filesystem, which was gone)."""
    tree.user("carol", size="64K")
    proc, port = start(tree.root)
    try:
        raw = Raw(port)
        raw.login("carol")
        raw.ok("TYPE I", 200)
        data = socket.create_connection((HOST, _pasv_port(raw)), timeout=15)
        time.sleep(0.2)
        assert raw.ok("STOR fill.bin", 125)
        data.sendall(b"x" * 32 * KiB)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGSTOP)  # both events wait for one turn of the loop
        try:
            data.sendall(b"y" * 64 * KiB)  # passes the quota
            time.sleep(0.1)
            _rst(raw.sock)
            time.sleep(0.1)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(1)
        data.close()
        assert proc.poll() is None, f"xxftpd died: {proc.communicate()[1][-2000:]}"
        fresh = Raw(port)
        fresh.login("carol")
        assert fresh.ok("NOOP", 200)
        assert not (tree.root / "carol/fill.bin").exists()
        assert wait_until(lambda: not temporaries(tree.root)), temporaries(tree.root)
    finally:
        if proc.poll() is None:
            stop(proc)
