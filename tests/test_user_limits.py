"""Per-user limits (``.xxftp/limits``) on a real server: rates shared by a
user's transfers, sessions counted across workers, a bad file refusing
logins. Rates are measured on 10 MiB and must come within 10%."""

from __future__ import annotations

import ftplib
import io
import os
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import HOST, ResumingFTP_TLS, start_logged, stop_logged, store, wait_until
from xxftp_pyftpdlib import XxftpTLSHandler, certs

KiB = 1024
MiB = 1024 * KiB
SIZE = 10 * MiB


def login(port: int, user: str = "alice", password: str = "pw", source: str | None = None) -> ftplib.FTP:
    ftp = ftplib.FTP(source_address=(source, 0) if source else None)
    ftp.connect(HOST, port, timeout=30)
    ftp.login(user, password)
    return ftp


def refusal(port: int, user: str = "alice", source: str | None = None) -> str:
    """The reply refusing a login (the test fails if it is let in)."""
    try:
        ftp = login(port, user, source=source)
    except ftplib.Error as err:
        return str(err)
    ftp.close()
    raise AssertionError(f"{user} was let in")


def timed_download(ftp: ftplib.FTP, path: str = "big") -> float:
    seen = [0]

    def count(chunk: bytes) -> None:
        seen[0] += len(chunk)
    start = time.monotonic()
    ftp.retrbinary(f"RETR {path}", count)
    elapsed = time.monotonic() - start
    assert seen[0] == SIZE
    return elapsed


def timed_upload(ftp: ftplib.FTP, path: str, data: bytes) -> float:
    start = time.monotonic()
    reply = store(ftp, path, data)  # until the server's final reply: all of it was read
    elapsed = time.monotonic() - start
    assert reply.startswith("226"), reply
    return elapsed


def limited(tree, limits: str, user: str = "alice", big: bool = True):
    home = tree.user(user, password="pw")
    tree.xxftp(home, "limits", limits)
    if big:
        (home / "big").write_bytes(os.urandom(SIZE))
    return home


def in_parallel(*calls):
    results: dict[int, object] = {}

    def run(i, call):
        try:
            results[i] = call()
        except BaseException as err:  # reported below
            results[i] = err
    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for value in results.values():
        if isinstance(value, BaseException):
            raise value
    return [results[i] for i in range(len(calls))]


def test_download_and_upload_rates_within_ten_percent(tree, start_server):
    limited(tree, "download_rate = 2M\nupload_rate = 2M\n")
    server = start_server(tree.root)
    ftp = login(server.port)
    assert SIZE / timed_download(ftp) == pytest.approx(2 * MiB, rel=0.10)
    data = os.urandom(SIZE)
    assert SIZE / timed_upload(ftp, "up", data) == pytest.approx(2 * MiB, rel=0.10)
    assert (tree.root / "alice" / "up").read_bytes() == data


def test_two_sessions_share_the_rate_and_another_user_is_unaffected(tree, start_server):
    limited(tree, "download_rate = 4M\n")
    bob = tree.user("bob", password="pw")
    (bob / "big").write_bytes(os.urandom(SIZE))
    server = start_server(tree.root)
    first, second, other = login(server.port), login(server.port), login(server.port, "bob")

    def bob_meanwhile():
        time.sleep(0.5)  # while both of alice's transfers run
        return timed_download(other)
    start = time.monotonic()
    _, _, bob_time = in_parallel(lambda: timed_download(first), lambda: timed_download(second), bob_meanwhile)
    both = time.monotonic() - start
    assert 2 * SIZE / both == pytest.approx(4 * MiB, rel=0.10)
    assert bob_time < 1.5  # alone at 4 MiB/s it would take 2.5 s, shared 5 s


def test_many_sessions_share_the_rate_to_the_last_byte(tree, start_server):
    """Sixteen downloads of 1 MiB at once: none is charged for more than it moved."""
    home = limited(tree, "download_rate = 4M\n", big=False)
    (home / "part").write_bytes(os.urandom(MiB))
    server = start_server(tree.root)
    sessions = [login(server.port) for _ in range(16)]

    def fetch(ftp):
        return lambda: ftp.retrbinary("RETR part", lambda chunk: None)
    start = time.monotonic()
    in_parallel(*map(fetch, sessions))
    assert 16 * MiB / (time.monotonic() - start) == pytest.approx(4 * MiB, rel=0.10)


def test_ascii_transfers_are_paced_too(tree, start_server):
    """ASCII mode with line ends converted takes pyftpdlib's own send and
    receive, not sendfile or splice."""
    home = limited(tree, "download_rate = 2M\nupload_rate = 2M\n", big=False)
    text = b"".join(b"line %07d of an ascii file\r\n" % i for i in range(4 * MiB // 30))
    (home / "text").write_bytes(text.replace(b"\r\n", b"\n"))
    server = start_server(tree.root, ascii_mangling=True)
    ftp = login(server.port)
    lines: list[str] = []
    start = time.monotonic()
    ftp.retrlines("RETR text", lines.append)
    assert time.monotonic() - start > 0.7 * len(text) / (2 * MiB)
    assert len(lines) == 4 * MiB // 30
    start = time.monotonic()
    assert ftp.storlines("STOR back", io.BytesIO(text)).startswith("226")
    assert time.monotonic() - start > 0.7 * len(text) / (2 * MiB)
    assert (home / "back").read_bytes() == text.replace(b"\r\n", b"\n")


def test_an_edited_file_applies_to_the_running_transfer(tree, start_server):
    home = limited(tree, "download_rate = 1M\n")
    server = start_server(tree.root)
    ftp = login(server.port)
    timer = threading.Timer(1.0, lambda: tree.xxftp(home, "limits", "download_rate = 100M\n"))
    timer.start()
    try:
        elapsed = timed_download(ftp)  # 10 s at 1 MiB/s
    finally:
        timer.cancel()
    assert 1.0 < elapsed < 4.0  # paced at first, then at the new rate


@pytest.mark.parametrize("concurrency", ["async", "multi-thread"])
def test_sessions_beyond_the_limit_are_refused_until_one_ends(tree, start_server, concurrency):
    limited(tree, "max_sessions = 2\n", big=False)
    tree.user("bob", password="pw")
    server = start_server(tree.root, concurrency)
    first, second = login(server.port), login(server.port)
    reply = refusal(server.port)
    assert reply.startswith("421 Too many sessions of this user (at most 2 sessions)"), reply
    login(server.port, "bob").quit()  # another user: not counted
    first.quit()
    third = login(server.port)  # QUIT freed the place at once
    assert refusal(server.port).startswith("421")
    second.sock.close()  # a client that vanishes without QUIT
    second.file.close()
    assert wait_until(lambda: _logs_in(server.port))
    third.quit()


def _logs_in(port: int) -> bool:
    try:
        login(port).quit()
    except ftplib.Error:
        return False
    return True


def test_sessions_per_address(tree, start_server):
    limited(tree, "max_sessions_per_ip = 1\n", big=False)
    server = start_server(tree.root)
    here = login(server.port)
    reply = refusal(server.port)
    assert reply.startswith("421 Too many sessions of this user from your address (at most 1 session)"), reply
    there = login(server.port, source="127.0.0.2")  # another address of the loopback
    assert refusal(server.port, source="127.0.0.2").startswith("421")
    here.quit()
    login(server.port).quit()
    there.quit()


def test_a_bad_limits_file_is_reported_and_refuses_logins(tree):
    home = limited(tree, "download_rate = 10M\nmax_sessions = three\n", big=False)
    tree.user("bob", password="pw", virtual="shared $root/shared-docs read\n")
    tree.xxftp(tree.folder("shared-docs"), "limits", "max_sessions = 1\n")  # not a home: ignored
    done = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(tree.root), "check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert [line for line in done.stdout.splitlines() if "limits" in line] == [
        "alice/.xxftp/limits:2: invalid max_sessions 'three' (a whole number); the user's logins are refused",
        "shared-docs/.xxftp/limits:0: limits apply to a user: only a home's limits file is read; this one is ignored "
        "(warning)"]
    proc, port = start_logged(tree.root)
    try:
        for _ in range(2):
            reply = refusal(port)
            assert reply.startswith("421 Login refused: the limits file of this account is invalid"), reply
        login(port, "bob").quit()  # other users are unaffected
        tree.xxftp(home, "limits", "download_rate = 10M\n")  # fixed: read again at the next login
        login(port).quit()
    finally:
        log = stop_logged(proc)  # no traceback
    assert log.count("limits:2: invalid max_sessions") == 1  # one line for the file
    assert log.count("its limits file is invalid") == 2  # one per refused login


def test_a_file_made_invalid_keeps_the_limits_of_sessions_logged_in(tree, start_server):
    home = limited(tree, "download_rate = 4M\n")
    server = start_server(tree.root)
    ftp = login(server.port)
    tree.xxftp(home, "limits", "download_rate = 4 megabytes\n")
    assert refusal(server.port).startswith("421 Login refused")
    assert SIZE / timed_download(ftp) == pytest.approx(4 * MiB, rel=0.10)  # never unlimited


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_paced_transfer_waits_without_spinning(tree):
    limited(tree, "download_rate = 4M\nupload_rate = 4M\n")
    proc, port = start_logged(tree.root)
    try:
        ftp = login(port)
        before = cpu_seconds(proc.pid)
        elapsed = timed_download(ftp) + timed_upload(ftp, "up", os.urandom(SIZE))
        used = cpu_seconds(proc.pid) - before
        assert elapsed > 4.5 and used < 0.25 * elapsed, (elapsed, used)  # a busy wait would use it all
        ftp.quit()
    finally:
        stop_logged(proc)


# --- several processes: --workers and multi-proc


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _server_side_inode(server_port: int, client_port: int) -> str | None:
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1].split(":"), fields[2].split(":")
            if int(local[1], 16) == server_port and int(remote[1], 16) == client_port:
                return fields[9]
    return None


def worker_of(proc, port: int, ftp: ftplib.FTP) -> int:
    """The worker process serving the control connection of ``ftp``."""
    inode = _server_side_inode(port, ftp.sock.getsockname()[1])
    out = subprocess.run(["ps", "--ppid", str(proc.pid), "-o", "pid="], capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        try:
            if inode in _socket_inodes(pid):
                return pid
        except OSError:
            continue
    raise AssertionError("no worker holds the connection")


def sessions_on_two_workers(proc, port: int) -> tuple[ftplib.FTP, ftplib.FTP]:
    """Two sessions of alice, served by different workers."""
    first = login(port)
    for _ in range(50):
        second = login(port)
        if worker_of(proc, port, second) != worker_of(proc, port, first):
            return first, second
        second.quit()
    raise AssertionError("every session landed on one worker")


def test_workers_share_the_session_limit_and_the_rate(tree):
    limited(tree, "download_rate = 4M\nmax_sessions = 2\n")
    proc, port = start_logged(tree.root, "--workers", "2", "--max-cons-per-ip", "0")
    try:
        first, second = sessions_on_two_workers(proc, port)
        for _ in range(6):  # on either worker: each holds one session, the user two
            assert refusal(port).startswith("421 Too many sessions")
        start = time.monotonic()
        in_parallel(lambda: timed_download(first), lambda: timed_download(second))
        assert 2 * SIZE / (time.monotonic() - start) == pytest.approx(4 * MiB, rel=0.10)
        # a worker that dies frees its sessions' places (it is replaced)
        os.kill(worker_of(proc, port, first), signal.SIGKILL)
        assert wait_until(lambda: _logs_in(port), timeout=15)
        second.quit()
    finally:
        stop_logged(proc)


def test_multi_proc_counts_sessions_across_processes(tree):
    limited(tree, "max_sessions = 1\nupload_rate = 2M\n", big=False)
    proc, port = start_logged(tree.root, "--concurrency", "multi-proc", "--max-cons-per-ip", "0")
    try:
        ftp = login(port)
        assert refusal(port).startswith("421 Too many sessions")
        assert SIZE / timed_upload(ftp, "up", os.urandom(SIZE)) == pytest.approx(2 * MiB, rel=0.10)
        ftp.quit()
        assert wait_until(lambda: _logs_in(port))
    finally:
        stop_logged(proc)


def test_tls_transfers_are_paced_too(tree, start_server, tmp_path):
    limited(tree, "download_rate = 2M\nupload_rate = 2M\n")
    cert, key = certs.self_signed(str(tmp_path))
    server = start_server(tree.root, handler_base=XxftpTLSHandler, certfile=cert, keyfile=key, ssl_context=None)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    ftp = ResumingFTP_TLS(context=context)
    ftp.connect(HOST, server.port, timeout=30)
    ftp.login("alice", "pw")
    ftp.prot_p()
    assert SIZE / timed_download(ftp) == pytest.approx(2 * MiB, rel=0.10)
    assert SIZE / timed_upload(ftp, "up", os.urandom(SIZE)) == pytest.approx(2 * MiB, rel=0.10)
    ftp.quit()
