#!/usr/bin/env python3
"""Connections that never log in, and floods past the open files limit.

    python3 bench/connections.py [--logins N] [--tmpdir DIR]

Two measurements of xxftpd alone (plain pyftpdlib fails both: it answers
421 to every login in the first, and closes its listener for good in the
second), each in the serving models it applies to:

- *strangers*: ``--max-cons 10``, the other limits at their defaults; one
  address (127.0.0.1) keeps its maximum of connections that never log in
  (10, or 20 with ``--workers 2``: the limits are each worker's), half
  idle, half sending NOOP every 0.5 s, each reopened as soon as it is
  closed; meanwhile N logins alternate between 127.0.0.2 and 127.0.0.1.
  Reported: the connections held, how many the holder lost (421) and
  reopened, and the median and slowest connect-to-230 time.
- *descriptors*: a hard open files limit of 256, ``--max-cons 1000``, 400
  connections at once (800 with two workers) while a logged-in session
  waits; reported: how many were served and how many got 421, the most
  descriptors a server process held, the time of a 2 MiB RETR of the
  waiting session during the flood, and of a new login after it.

Lines go to stdout, progress to stderr. The figures in docs/RELIABILITY.md
(the "strangers and descriptors" row) come from this script.
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import io
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HOST, OTHER = "127.0.0.1", "127.0.0.2"
REPO = Path(__file__).resolve().parent.parent
MODELS = {"async": ["--concurrency", "async"], "multi-thread": ["--concurrency", "multi-thread"],
          "multi-proc": ["--concurrency", "multi-proc"], "workers": ["--workers", "2"]}
NO_CAPS = ["--max-cons-per-ip", "0", "--max-unauthenticated", "0", "--max-unauthenticated-per-ip", "0",
           "--timeout", "600", "--login-timeout", "600"]


def make_root(base: Path) -> Path:
    root = base / "root"
    (root / "alice" / ".xxftp").mkdir(parents=True)
    (root / "alice" / ".xxftp" / "password").write_text(hashlib.md5(b"pw").hexdigest() + "\n")
    (root / "alice" / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def serve(root: Path, args: list[str], nofile: int | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(root), "--host", "0.0.0.0",
                             "--port", str(port), "--log-file", str(root.parent / f"log-{port}"), *args],
                            preexec_fn=limit, env=env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("xxftpd did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


class Holder(threading.Thread):
    """``count`` connections from 127.0.0.1 that never log in, reopened when closed."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.socks: dict[socket.socket, int] = {}
        self.lost = 0
        self.ready, self.done = threading.Event(), threading.Event()

    def _open(self, n: int) -> None:
        try:
            s = socket.create_connection((HOST, self.port), timeout=5)
        except OSError:
            return
        s.setblocking(False)
        self.socks[s] = n

    def run(self) -> None:
        for n in range(self.count):
            self._open(n)
            time.sleep(0.02)
        time.sleep(0.3)
        self.ready.set()
        next_noop = time.monotonic()
        while not self.done.is_set():
            for s in select.select(list(self.socks), [], [], 0.1)[0]:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.lost += 1
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
        self.done.set()
        self.join(10)
        for s in self.socks:
            s.close()


def login(port: int, source: str = HOST) -> ftplib.FTP:
    ftp = ftplib.FTP(source_address=(source, 0))
    ftp.connect(HOST, port, timeout=20)
    ftp.login("alice", "pw")
    return ftp


def strangers(root: Path, model: str, logins: int) -> str:
    proc, port = serve(root, ["--max-cons", "10", *MODELS[model]])
    holder = Holder(port, 20 if model == "workers" else 10)
    holder.start()
    try:
        holder.ready.wait(15)
        times = []
        for i in range(logins):
            started = time.monotonic()
            ftp = login(port, (OTHER, HOST)[i % 2])
            times.append(time.monotonic() - started)
            ftp.quit()
        held = len(holder.socks)
    finally:
        holder.stop()
        stop(proc)
    return (f"strangers {model}: {held} held, {holder.lost} lost and reopened; {logins} logins: "
            f"median {statistics.median(times) * 1000:.1f} ms, slowest {max(times) * 1000:.1f} ms")


def descriptors(root: Path, model: str) -> str:
    proc, port = serve(root, ["--max-cons", "1000", *MODELS[model], *NO_CAPS], nofile=256)
    count = 800 if model == "workers" else 400
    socks: list[socket.socket] = []
    try:
        ftp = login(port)

        def one(_):
            s = socket.create_connection((HOST, port), timeout=20)
            try:
                code = s.recv(4)
            except OSError:
                code = b""
            return s, code

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(count)))
        socks = [s for s, _ in results]
        codes = [c[:3] for _, c in results]
        pids = [proc.pid] + [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        peak = max(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)
        started = time.monotonic()
        out = io.BytesIO()
        ftp.retrbinary("RETR big.bin", out.write)
        retr = time.monotonic() - started
        whole = out.getvalue() == (root / "alice" / "big.bin").read_bytes()
        for s in socks:
            s.close()
        socks = []
        started = time.monotonic()
        login(port).quit()
        again = time.monotonic() - started
        ftp.quit()
    finally:
        for s in socks:
            s.close()
        stop(proc)
    return (f"descriptors {model}: {count} connections under 256: {codes.count(b'220')} served, "
            f"{codes.count(b'421')} got 421, at most {peak} descriptors a process; RETR 2 MiB during the flood "
            f"{'byte-exact' if whole else 'DIFFERENT'} in {retr * 1000:.0f} ms; a new login after it {again * 1000:.1f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logins", type=int, default=20, help="logins beside the held connections (default 20)")
    p.add_argument("--tmpdir", help="where the tree is made (default: the system temp folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="xxftpd-connections-", dir=args.tmpdir) as base:
        root = make_root(Path(base))
        for model in MODELS:
            print(f"strangers {model} ...", file=sys.stderr)
            print(strangers(root, model, args.logins), flush=True)
        for model in ("async", "multi-thread", "workers"):
            print(f"descriptors {model} ...", file=sys.stderr)
            print(descriptors(root, model), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
