"""Password checks over real sockets: a login's time tells no user apart,
waiting logins cost the event loop nothing, and a storm of logins is
bounded (421 beyond ``--max-login-checks``) while transfers go on."""

from __future__ import annotations

import ftplib
import os
import random
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import HOST, download, free_port, run_xxftpd, stop_process, wait_until
from xxftp_pyftpdlib import hashpool, passwords

MD5_USER, SCRYPT_USER, UNKNOWN = "md5user", "scryptuser", "nosuchuser"
PASSWORD = "pw"


class Hashes:
    """Every password check of this process waits while ``hold()`` is in force."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.started: list[int] = []

    def hold(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()


@pytest.fixture
def hashes(monkeypatch):
    gate = Hashes()
    real = passwords.check

    def gated(*args, **kwargs):
        gate.started.append(1)
        gate.open.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(passwords, "check", gated)
    yield gate
    gate.release()


class Raw:
    """A control connection on a plain socket (timing without ftplib's layers)."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.reply()  # the greeting

    def reply(self) -> str:
        line = self.file.readline()
        if line[3:4] == b"-":
            end = line[:3] + b" "
            while not line.startswith(end):
                line = self.file.readline()
        return line.decode(errors="replace").rstrip("\r\n")

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _pass_time(port: int, user: str, password: str) -> tuple[float, str]:
    """Seconds from sending PASS to its reply, on a fresh connection; the reply."""
    raw = Raw(port)
    try:
        assert raw.cmd(f"USER {user}").startswith("331 ")  # the same for every kind
        raw.sock.sendall(f"PASS {password}\r\n".encode())
        t0 = time.perf_counter()
        reply = raw.reply()
        return time.perf_counter() - t0, reply
    finally:
        raw.close()


KINDS = {  # kind -> (user, password, reply code)
    "unknown user": (UNKNOWN, PASSWORD, "530"),
    "md5, wrong password": (MD5_USER, "wrong", "530"),
    "md5, right password": (MD5_USER, PASSWORD, "230"),
    "scrypt, wrong password": (SCRYPT_USER, "wrong", "530"),
    "scrypt, right password": (SCRYPT_USER, PASSWORD, "230"),
}


def _measure(port: int, rounds: int, kinds=tuple(KINDS)) -> dict[str, list[float]]:
    """``rounds`` logins of every kind, interleaved in a new random order
    each round (a slow phase of the machine falls on every kind)."""
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        order = list(kinds)
        random.shuffle(order)
        for kind in order:
            user, password, code = KINDS[kind]
            secs, reply = _pass_time(port, user, password)
            assert reply.startswith(code + " "), (kind, reply)
            times[kind].append(secs)
    return times


def _differences(times: dict[str, list[float]]) -> list[str]:
    """What tells a known user from the unknown one: a median more than
    5 ms away, or ranges that do not overlap."""
    base = times["unknown user"]
    found = []
    for kind, samples in times.items():
        gap = abs(statistics.median(samples) - statistics.median(base))
        if gap > 0.005 or min(samples) > max(base) or max(samples) < min(base):
            found.append(f"{kind}: median {statistics.median(samples) * 1000:.1f} ms against "
                         f"{statistics.median(base) * 1000:.1f} ms (range {min(samples) * 1000:.1f}-"
                         f"{max(samples) * 1000:.1f} against {min(base) * 1000:.1f}-{max(base) * 1000:.1f})")
    return found


@pytest.mark.parametrize("formats", ["md5 and scrypt", "md5 only"])
def test_a_login_takes_the_same_time_whether_the_user_exists_or_not(tree, start_server, formats):
    """30 logins of each kind (unknown user; MD5 and scrypt users with a
    wrong and the right password), time from PASS to the 230/530 reply:
    every median within 5 ms of the unknown user's, the ranges overlapping.

    The failure delay is 0 here (the same for every failure, added after
    the check: the property does not depend on it). On a busy machine a
    50 ms hash takes anywhere from 50 to 700 ms, which moves a median of
    30 by several ms: then 30 more rounds are measured and the medians
    taken over all of them (up to 120 rounds), which converge if the kinds
    cost the same and never do if they don't. An MD5 check made at once
    (what this replaced) is 50 ms faster than an unknown user's every time.
    In a tree of MD5 hashes only, every check costs an MD5, an unknown
    user's too.
    """
    tree.user(MD5_USER, password=PASSWORD)
    kinds = tuple(KINDS)
    if formats == "md5 only":
        kinds = tuple(kind for kind in KINDS if not kind.startswith("scrypt"))
    else:
        home = tree.user(SCRYPT_USER)
        tree.xxftp(home, "password", passwords.scrypt_hash(PASSWORD))
    srv = start_server(tree.root, auth_failed_timeout=0)
    _measure(srv.port, 1, kinds)  # warm up: the pool's threads, the caches
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(4):
        for kind, samples in _measure(srv.port, 30, kinds).items():
            times[kind].extend(samples)
        found = _differences(times)
        if not found:
            return
    pytest.fail(f"logins tell users apart after {len(times['unknown user'])} rounds: " + "; ".join(found))


def test_user_answers_331_to_real_and_unknown_users_alike(tree, start_server):
    tree.user(MD5_USER, password=PASSWORD)
    home = tree.user(SCRYPT_USER)
    tree.xxftp(home, "password", "not a hash in any format\n")
    srv = start_server(tree.root)
    for user in (MD5_USER, SCRYPT_USER, UNKNOWN, "bad.name", "anonymous"):
        raw = Raw(srv.port)
        try:
            assert raw.cmd(f"USER {user}") == "331 Username ok, send password.", user
        finally:
            raw.close()


def _thread_cpu(tid: int) -> float:
    """CPU seconds of one thread of this process (Linux /proc)."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_waiting_logins_cost_the_event_loop_nothing(tree, start_server, hashes):
    """50 logins wait for a check that does not end: the loop schedules
    nothing for them (no polling) and its thread uses no CPU meanwhile."""
    hashes.hold()
    release = hashes.release
    srv = start_server(tree.root, login_checks=hashpool.LoginChecks(64))
    sched = srv.server.ioloop.sched
    scheduled = []
    register = sched.register
    sched.register = lambda call: (scheduled.append(call), register(call))[1]
    clients = []
    try:
        for i in range(50):
            raw = Raw(srv.port)
            clients.append(raw)
            assert raw.cmd(f"USER {UNKNOWN}{i}").startswith("331")
            raw.sock.sendall(b"PASS x\r\n")
        assert wait_until(lambda: len(hashes.started) >= 1)
        time.sleep(0.3)  # every PASS has been read
        scheduled.clear()
        cpu = _thread_cpu(srv.native_id) if sys.platform.startswith("linux") else 0.0
        time.sleep(2)
        cpu = (_thread_cpu(srv.native_id) if sys.platform.startswith("linux") else 0.0) - cpu
        waiting = len(scheduled)
        release()
        for raw in clients:
            assert raw.reply().startswith("530 ")
    finally:
        release()
        for raw in clients:
            raw.close()
    # pyftpdlib's own timers (idle timeouts) are set when a command comes,
    # and none comes while the logins wait
    assert waiting == 0, f"{waiting} calls scheduled on the loop in 2 s while 50 logins waited"
    assert cpu < 0.1, f"the loop's thread used {cpu:.2f} s of CPU in 2 s while 50 logins waited"


def _storm_login(port: int, user: str, replies: list[str]) -> None:
    try:
        raw = Raw(port, timeout=90)
    except OSError as err:
        replies.append(f"connect: {err}")
        return
    try:
        raw.cmd(f"USER {user}")
        replies.append(raw.cmd("PASS x"))
        if replies[-1].startswith("421"):
            replies.append("closed" if raw.file.readline() == b"" else "still open")
    except OSError as err:
        replies.append(f"error: {err}")
    finally:
        raw.close()


def test_a_login_storm_is_bounded_and_leaves_transfers_alone(tree, start_server, connect, hashes):
    """With at most 8 checks in progress and every check held, 30 more
    logins: 8 wait, 22 are answered 421 at once and closed; meanwhile a
    logged-in session answers NOOP and downloads as usual. Once the checks
    end, the 8 get their 530."""
    home = tree.user(MD5_USER, password=PASSWORD)
    data = os.urandom(4 * 1024 * 1024)
    (home / "big.bin").write_bytes(data)
    srv = start_server(tree.root, login_checks=hashpool.LoginChecks(8))
    ftp = connect(srv.port, MD5_USER, PASSWORD)
    hashes.hold()
    replies: list[str] = []
    threads = [threading.Thread(target=_storm_login, args=(srv.port, f"{UNKNOWN}{i}", replies)) for i in range(30)]
    try:
        for t in threads:
            t.start()
        refused = lambda: sum(r.startswith("421 ") for r in replies)  # noqa: E731
        assert wait_until(lambda: refused() >= 22, timeout=20), replies
        noops = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert ftp.voidcmd("NOOP").startswith("200")
            noops.append(time.perf_counter() - t0)
        assert download(ftp, "big.bin") == data
        assert refused() == 22, replies  # exactly the bound waits
        assert "still open" not in replies
    finally:
        hashes.release()
        for t in threads:
            t.join(60)
    assert sum(r.startswith("530 ") for r in replies) == 8, replies
    assert statistics.median(noops) < 0.1, noops
    assert ftp.voidcmd("NOOP").startswith("200")


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


@pytest.mark.parametrize("model", [["--concurrency", "async"], ["--concurrency", "multi-thread"],
                                   ["--concurrency", "multi-proc"], ["--workers", "2"]], ids=" ".join)
def test_logins_in_every_concurrency_model(tree, model):
    """Right and wrong passwords and unknown users, MD5 and scrypt, in each
    serving model; in the thread model each connection's thread ends with
    its connection (the wakeup channel leaves the thread's loop)."""
    tree.user(MD5_USER, password=PASSWORD)
    home = tree.user(SCRYPT_USER)
    tree.xxftp(home, "password", passwords.scrypt_hash(PASSWORD))
    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), *model, wait_for_port=port)

    def login(user: str, password: str) -> str:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=30)
        try:
            reply = ftp.login(user, password)
            assert ftp.pwd() == "/"
            ftp.quit()
            return reply[:3]
        except ftplib.error_perm as err:
            return str(err)[:3]
        finally:
            ftp.close()

    def logins() -> None:  # at once: each failure is delayed 3 s
        attempts = {(user, password): "230" if password == PASSWORD and user != UNKNOWN else "530"
                    for user in (MD5_USER, SCRYPT_USER, UNKNOWN) for password in (PASSWORD, "wrong")}
        with ThreadPoolExecutor(len(attempts)) as pool:
            got = dict(zip(attempts, pool.map(lambda a: login(*a), attempts)))
        assert got == attempts

    try:
        logins()
        if "multi-thread" in model:
            time.sleep(0.5)
            settled = _threads(proc.pid)  # the check pool's threads are there now
            logins()
            assert wait_until(lambda: _threads(proc.pid) <= settled), (_threads(proc.pid), settled)
    finally:
        stop_process(proc)


def test_the_bound_is_set_from_the_command_line_and_the_config_file(tree, tmp_path):
    """``--max-login-checks`` (TOML ``max_login_checks``), default 16 per
    CPU: with 1, a login sent while another one's check runs is answered 421."""
    from xxftp_pyftpdlib.cli import build_parser, load_config

    parser = build_parser()
    assert parser.parse_args([]).max_login_checks == hashpool.MAX_CHECKS == 16 * len(os.sched_getaffinity(0))
    config = tmp_path / "x.toml"
    config.write_text("max_login_checks = 1\n")
    parser.set_defaults(**load_config(parser, str(config)))
    assert parser.parse_args([]).max_login_checks == 1
    home = tree.user("slow")  # a hash of legal but heavy parameters: its check takes a while
    tree.xxftp(home, "password", "$scrypt$ln=17,r=8,p=1$" + "A" * 22 + "==$" + "A" * 43 + "=\n")
    port = free_port()
    proc = run_xxftpd("--config", str(config), "--root", str(tree.root), "--host", HOST, "--port", str(port),
                      wait_for_port=port)
    try:
        first, second = Raw(port), Raw(port)
        assert first.cmd("USER slow").startswith("331") and second.cmd(f"USER {UNKNOWN}").startswith("331")
        first.sock.sendall(b"PASS x\r\n")
        time.sleep(0.1)
        assert second.cmd("PASS x").startswith("421 Too many logins in progress")
        assert first.reply().startswith("530 ")
        first.close()
        second.close()
    finally:
        stop_process(proc)


@pytest.mark.parametrize("lines, codes", [
    ([f"USER {MD5_USER}", f"PASS {PASSWORD}", "NOOP", "PWD"], ["331", "230", "200", "257"]),
    # after a failed PASS the lines sent with it are answered 530, not run
    ([f"USER {MD5_USER}", "PASS wrong", f"USER {MD5_USER}", f"PASS {PASSWORD}", "PWD"],
     ["331", "530", "530", "530", "530"]),
    ([f"USER {UNKNOWN}", "PASS x", "NOOP", f"USER {SCRYPT_USER}", f"PASS {PASSWORD}", "SYST"],
     ["331", "530", "530", "530", "530", "530"]),
    ([f"USER {SCRYPT_USER}", f"PASS {PASSWORD}", "NOOP", "SYST"], ["331", "230", "200", "215"]),
], ids=["right", "wrong then right", "unknown then scrypt", "scrypt"])
def test_commands_sent_with_pass_are_answered_in_order(tree, start_server, lines, codes):
    """A client that sends several lines at once gets the replies in the
    order of its commands, though PASS is answered from a worker thread
    and a failed one after a delay: the lines after PASS wait for it (and
    after a failed one are answered without running)."""
    tree.user(MD5_USER, password=PASSWORD)
    home = tree.user(SCRYPT_USER)
    tree.xxftp(home, "password", passwords.scrypt_hash(PASSWORD))
    srv = start_server(tree.root, auth_failed_timeout=0.2)
    raw = Raw(srv.port)
    try:
        raw.sock.sendall("".join(line + "\r\n" for line in lines).encode())
        assert [raw.reply()[:3] for _ in lines] == codes
    finally:
        raw.close()


def test_a_client_waiting_for_its_pass_answer_is_not_idle(tree, start_server, hashes):
    """The idle timeout (here 1 s) does not cut off a client whose PASS is
    still being checked (on busy cores a check can take seconds): it gets
    its answer, and the idle clock runs again from there."""
    tree.user(MD5_USER, password=PASSWORD)
    srv = start_server(tree.root, timeout=1)
    hashes.hold()
    raw = Raw(srv.port)
    try:
        assert raw.cmd(f"USER {MD5_USER}").startswith("331")
        raw.sock.sendall(f"PASS {PASSWORD}\r\n".encode())
        time.sleep(2.5)
        hashes.release()
        assert raw.reply().startswith("230 ")
        assert raw.cmd("NOOP").startswith("200")
        assert raw.reply().startswith("421 Control connection timed out")  # idle afterwards: cut off as usual
    finally:
        hashes.release()
        raw.close()
