"""What the machine allows: bare socket loops with no FTP in them.

Runs, interleaved, each server in its own process, the simplest possible server loops
against the same client code as ``bench/run.py`` (``recv_into`` into a
reused 1 MiB buffer, 256 KiB ``sendall``), so a server's figure can be
compared with the ceiling of the kernel copies it can't avoid:

- download: ``os.sendfile`` of a 200 MiB file in 256 KiB counts, the
  socket blocking (no event loop at all);
- upload: ``recv_into`` a 1 MiB buffer + ``os.write`` (what xxftpd does),
  and ``os.splice`` socket -> pipe -> file (no copy through user memory).

For each: MiB/s, and the CPU milliseconds the server thread spent per
200 MiB. Usage: ``python3 bench/floors.py [--repeat N] [--tmpdir DIR]``.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing
import os
import resource
import socket
import statistics
import sys
import tempfile
import time

MiB = 1024 * 1024
SIZE = 200 * MiB
CHUNK = 256 * 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve_download(conn: socket.socket, path: str) -> None:
    with open(path, "rb") as f:
        offset = 0
        while offset < SIZE:
            offset += os.sendfile(conn.fileno(), f.fileno(), offset, CHUNK)


def _serve_upload_copy(conn: socket.socket, path: str) -> None:
    buf = bytearray(MiB)
    view = memoryview(buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while n := conn.recv_into(buf):
            os.write(fd, view[:n])
    finally:
        os.close(fd)


def _serve_upload_splice(conn: socket.socket, path: str) -> None:
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while n := os.splice(conn.fileno(), w, MiB):
            while n:
                n -= os.splice(r, fd, n)
    finally:
        for f in (fd, r, w):
            os.close(f)


def _server(listener: socket.socket, kind: str, path: str, report) -> None:
    """The server process: one connection, then its CPU time to ``report``."""
    conn, _ = listener.accept()
    start = _cpu()
    with conn:
        SERVE[kind](conn, path)
    report.send(_cpu() - start)


def run_once(kind: str, path: str) -> tuple[float, float]:
    """One 200 MiB transfer through a bare server loop in its own process;
    (MiB/s, server CPU ms)."""
    listener = socket.create_server(("127.0.0.1", 0))
    mine, theirs = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_server, args=(listener, kind, path, theirs))
    proc.start()
    client = socket.create_connection(listener.getsockname())
    t0 = time.perf_counter()
    if kind == "download":
        buf = bytearray(MiB)
        got = 0
        while n := client.recv_into(buf):
            got += n
        assert got == SIZE, got
    else:
        chunk = memoryview(os.urandom(CHUNK))
        for _ in range(SIZE // CHUNK):
            client.sendall(chunk)
        client.shutdown(socket.SHUT_WR)
        client.recv(1)  # the server closes when all is written
    elapsed = time.perf_counter() - t0
    client.close()
    cpu = mine.recv()
    proc.join()
    listener.close()
    return SIZE / MiB / elapsed, cpu * 1000


SERVE = {"download": _serve_download, "upload (recv_into + write)": _serve_upload_copy,
         "upload (splice)": _serve_upload_splice}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, metavar="N")
    parser.add_argument("--tmpdir", default=None, metavar="DIR")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xxftpd-floors-", dir=args.tmpdir) as base:
        source = os.path.join(base, "src.bin")
        with open(source, "wb") as f:
            block = os.urandom(MiB)
            for _ in range(SIZE // MiB):
                f.write(block)
        kinds = list(SERVE)
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        for round_ in range(args.repeat):
            for kind in kinds:
                path = source if kind == "download" else os.path.join(base, f"up{round_}.bin")
                results[kind].append(run_once(kind, path))
                if kind != "download":
                    os.remove(path)
        print("| bare loop, 200 MiB | MiB/s | server CPU ms |")
        print("|---|---:|---:|")
        for kind in kinds:
            rate = statistics.median(r for r, _ in results[kind])
            cpu = statistics.median(c for _, c in results[kind])
            print(f"| {kind} | {rate:.0f} | {cpu:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
