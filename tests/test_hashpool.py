"""Slow password hashes: low priority, and their memory given back."""

from __future__ import annotations

import ftplib
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import HOST, free_port, run_xxftpd, wait_until
from xxftp_pyftpdlib import hashpool, passwords

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")


def _nice(tid: int) -> int:
    """The nice value of one thread of this process, from /proc."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of stat(5); fields[0] is field 3


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@linux_only
def test_hash_threads_take_idle_cpu_only_and_nothing_else_does(tree, start_server, connect):
    home = tree.user("alice")
    tree.xxftp(home, "password", passwords.scrypt_hash("pw"))
    srv = start_server(tree.root)
    connect(srv.port, "alice", "pw")  # a slow login: the pool exists
    workers = [t for t in threading.enumerate() if t.name.startswith("xxftpd-login_")]
    assert workers, "the slow login ran in no pool thread"
    assert all(os.sched_getscheduler(t.native_id) == os.SCHED_IDLE for t in workers)
    # the threads hashing files for HASH run on idle CPU too (tests/test_hashes.py)
    others = [t for t in threading.enumerate() if not t.name.startswith(("xxftpd-login", "xxftpd-hash-"))]
    assert all(os.sched_getscheduler(t.native_id) == os.SCHED_OTHER for t in others)
    base = _nice(threading.main_thread().native_id)
    assert all(_nice(t.native_id) == base for t in others)


@linux_only
def test_a_login_on_a_saturated_machine_is_still_checked(tree, start_server, connect):
    """Checks run under SCHED_IDLE only, with no second pool at a higher
    priority: with a busy loop on every core, the kernel still gives them
    a share (the smallest weight, not none), so the login ends, slowly."""
    home = tree.user("alice")
    tree.xxftp(home, "password", passwords.scrypt_hash("pw"))
    srv = start_server(tree.root)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hashpool.cpus())]
    try:
        time.sleep(0.2)
        ftp = connect(srv.port, timeout=60)
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.login("alice", "wrong")
        assert ftp.login("alice", "pw").startswith("230")
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def _held(gate: threading.Event) -> str:
    gate.wait(30)
    return "done"


def test_login_checks_are_bounded_and_give_their_place_back():
    checks = hashpool.LoginChecks(2)
    gate = threading.Event()
    try:
        first, second = checks.submit(_held, gate), checks.submit(_held, gate)
        assert first is not None and second is not None
        assert checks.submit(_held, gate) is None  # the bound: refused at once
        assert checks.in_progress == 2
    finally:
        gate.set()
    assert first.result(10) == second.result(10) == "done"
    assert wait_until(lambda: checks.in_progress == 0)
    assert checks.submit(str, 1).result(10) == "1"


def test_a_cancelled_check_gives_its_place_back():
    """A check still queued when its session closes is cancelled: its place
    is free again (and its hash never runs)."""
    gate = threading.Event()
    workers = hashpool.cpus()
    busy = hashpool.LoginChecks(0)
    blockers = [busy.submit(_held, gate) for _ in range(workers)]  # every pool thread busy
    checks = hashpool.LoginChecks(1)
    try:
        queued = checks.submit(_held, gate)
        assert checks.submit(_held, gate) is None
        assert queued.cancel()
        assert checks.in_progress == 0
        assert checks.submit(str, 2) is not None
    finally:
        gate.set()
    for future in blockers:
        future.result(10)
    assert wait_until(lambda: checks.in_progress == 0 and busy.in_progress == 0)


@linux_only
def test_slow_logins_give_their_memory_back(tree):
    """scrypt needs 16 MiB a hash; 40 logins over the pool must not keep it."""
    home = tree.user("alice")
    tree.xxftp(home, "password", passwords.scrypt_hash("pw"))
    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), wait_for_port=port)

    def login() -> None:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=60)
        ftp.login("alice", "pw")
        ftp.quit()

    try:
        login()
        before = _rss_mib(proc.pid)
        for _ in range(5):
            threads = [threading.Thread(target=login) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        # Under load a check of a client that gave up may still be hashing:
        # its 16 MiB are in use, not kept. Wait for it to end before measuring.
        wait_until(lambda: _rss_mib(proc.pid) - before < 8, timeout=30)
        grown = _rss_mib(proc.pid) - before
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    # kept in the threads' heaps, it was 16 MiB per pool thread (48 MiB measured on 2 cores)
    assert grown < 8, f"the server grew by {grown:.1f} MiB over 40 scrypt logins"
