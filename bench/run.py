#!/usr/bin/env python3
"""Benchmark xxftpd against plain pyftpdlib, side by side in one run.

    python3 bench/run.py [--quick] [--repeat N] [--json PATH] [--tmpdir DIR] [--keep]

Both servers run as subprocesses on 127.0.0.1 (free ports) over the same
data, generated under a temporary folder that is removed at the end. The
runs are interleaved round by round (the server that goes first alternates
each round) and every figure is the median over ``--repeat`` rounds. See
bench/README.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
USER, PASSWORD = "alice", "pw"
MiB = 1024 * 1024
CHUNK = 256 * 1024  # client upload write size
RECV_BUF = 1 * MiB  # client download buffer

# The 10-folder-deep path. On xxftpd, m1, n2 and n3 are nested mounts
# (n2 is declared inside m1's target, n3 inside n2's); on pyftpdlib they
# are plain folders with the same names.
DEEP = ["m1", "a1", "a2", "n2", "b1", "b2", "n3", "c1", "c2", "c3"]
DEEP_PATH = "/" + "/".join(DEEP)
DEEP_FILE = DEEP_PATH + "/file.txt"


@dataclass(frozen=True)
class Sizes:
    big_mib: int  # STOR/RETR file size
    quota_files: int  # files in the big quota tree
    quota_dirs: int  # ... spread over this many subfolders
    list_files: int  # files in the listed folder
    uploads: int  # 1 KiB uploads per tree per round
    cmd_iters: int  # CWD/SIZE/MDTM each, per round
    list_iters: int  # LIST and MLSD each, per round
    logins: int  # concurrent connect+login
    burst: int  # ... started this many at a time
    transfers: int  # STOR/RETR of the big file per round (median taken)
    login_reps: int  # login figure runs per round (median taken)


FULL = Sizes(big_mib=200, quota_files=100_000, quota_dirs=4_000, list_files=10_000,
             uploads=200, cmd_iters=300, list_iters=5, logins=100, burst=32,
             transfers=3, login_reps=3)
QUICK = Sizes(big_mib=16, quota_files=2_000, quota_dirs=80, list_files=500,
              uploads=20, cmd_iters=30, list_iters=2, logins=100, burst=32,
              transfers=2, login_reps=2)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# data


def write_file(path: str | Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def make_big_file(path: Path, size: int, chunk: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = size
        while left:
            n = os.write(fd, chunk[:min(left, len(chunk))])
            left -= n
    finally:
        os.close(fd)


def make_many(folder: Path, files: int, dirs: int, payload: bytes) -> None:
    """``files`` files of ``payload`` spread over ``dirs`` subfolders."""
    per_dir = -(-files // dirs)
    made = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for d in range(dirs):
        sub = os.path.join(folder, f"d{d:05d}")
        os.mkdir(sub)
        for j in range(min(per_dir, files - made)):
            fd = os.open(os.path.join(sub, f"f{j:04d}.dat"), flags, 0o644)
            os.write(fd, payload)
            os.close(fd)
            made += 1
        if made >= files:
            break


def make_flat(folder: Path, files: int, payload: bytes) -> None:
    folder.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(files):
        fd = os.open(os.path.join(folder, f"file{i:05d}.txt"), flags, 0o644)
        os.write(fd, payload)
        os.close(fd)


def xxftp_file(folder: Path, name: str, text: str) -> None:
    (folder / ".xxftp").mkdir(parents=True, exist_ok=True)
    (folder / ".xxftp" / name).write_text(text)


def build_data(base: Path, sz: Sizes) -> dict:
    """Both trees under ``base``; returns the paths the run needs."""
    chunk = os.urandom(CHUNK)
    big = base / "src-big.bin"
    make_big_file(big, sz.big_mib * MiB, chunk)

    # --- xxftpd root
    xroot = base / "xxroot"
    home = xroot / "alice"
    home.mkdir(parents=True)
    xxftp_file(home, "password", hashlib.md5(PASSWORD.encode()).hexdigest() + "\n")
    xxftp_file(home, "permission", "read,write,modify\n")
    xxftp_file(home, "size", "100G\n")
    xxftp_file(home, "virtual",
               "m1      $root/t1      read,write,modify\n"
               "m2      $root/t2      read\n"
               "qbig    $root/qbig    read,write,modify\n"
               "qempty  $root/qempty  read,write,modify\n")
    t1, t2, t3, t4 = (xroot / n for n in ("t1", "t2", "t3", "t4"))
    for t in (t1, t2, t3, t4):
        t.mkdir()
    # nested mounts along the deep path: m1 -> t1, n2 -> t3, n3 -> t4
    (t1 / "a1" / "a2").mkdir(parents=True)
    xxftp_file(t1 / "a1" / "a2", "virtual", "n2 $root/t3 read,write,modify\n")
    (t3 / "b1" / "b2").mkdir(parents=True)
    xxftp_file(t3 / "b1" / "b2", "virtual", "n3 $root/t4 read,write,modify\n")
    (t4 / "c1" / "c2" / "c3").mkdir(parents=True)
    write_file(t4 / "c1" / "c2" / "c3" / "file.txt", b"x" * 4096)
    write_file(t2 / "readme.txt", b"read-only mount\n")
    os.link(big, home / "big.bin")
    os.link(big, t1 / "big.bin")
    make_flat(home / "list", sz.list_files, b"y" * 100)
    # quota trees for the small-upload figure
    qbig, qempty = xroot / "qbig", xroot / "qempty"
    for q in (qbig, qempty):
        q.mkdir()
        xxftp_file(q, "size", "100G\n")
    log(f"writing {sz.quota_files:,} files in {sz.quota_dirs:,} folders ...")
    t0 = time.monotonic()
    make_many(qbig, sz.quota_files, sz.quota_dirs, b"z" * 1024)
    log(f"... done in {time.monotonic() - t0:.1f} s")

    # --- plain pyftpdlib home: the same contents, mounts as real folders
    phome = base / "plain" / "alice"
    phome.mkdir(parents=True)
    deep = phome.joinpath(*DEEP)
    deep.mkdir(parents=True)
    write_file(deep / "file.txt", b"x" * 4096)
    (phome / "m2").mkdir()
    write_file(phome / "m2" / "readme.txt", b"read-only mount\n")
    os.link(big, phome / "big.bin")
    os.link(big, phome / "m1" / "big.bin")
    make_flat(phome / "list", sz.list_files, b"y" * 100)
    (phome / "qempty").mkdir()
    return {"xroot": xroot, "phome": phome, "qbig": qbig, "qempty": qempty, "chunk": chunk}


def check_space(folder: Path, sz: Sizes) -> None:
    need = (3 * sz.big_mib * MiB            # source + an upload + its temporary
            + sz.quota_files * 8192          # 1 KiB files (a block each, plus inode)
            + 2 * sz.list_files * 4096
            + 256 * MiB)                     # margin
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(f"bench: error: {folder} has {free / MiB:.0f} MiB free, "
                         f"the run needs about {need / MiB:.0f} MiB (use --tmpdir or --quick)")
    st = os.statvfs(folder)
    inodes = sz.quota_files + sz.quota_dirs + 2 * sz.list_files + 1000
    if st.f_files and st.f_favail < inodes:
        raise SystemExit(f"bench: error: {folder} has {st.f_favail} free inodes, the run needs {inodes}")


# --------------------------------------------------------------------------
# servers


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess; ``argv`` gets ``--port N`` appended."""

    def __init__(self, label: str, argv: list[str], log_path: Path) -> None:
        self.label = label
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"

    def start(self, timeout: float = 120) -> None:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        for attempt in range(3):
            self.port = free_port()
            logf = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(self.argv + ["--port", str(self.port)], stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=subprocess.STDOUT, env=env)
            finally:
                logf.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    break
                try:
                    ftp = ftplib.FTP()
                    ftp.connect(HOST, self.port, timeout=5)
                except OSError:
                    time.sleep(0.05)
                    continue
                try:
                    ftp.login(USER, PASSWORD)
                    ftp.quit()
                except ftplib.all_errors as err:
                    self.stop()
                    raise ServerError(f"{self.label} started but login as {USER} failed: {err}\n"
                                      f"  command: {' '.join(self.argv)}\n  log:\n{self._log_tail()}") from None
                return
            else:
                self.stop()
                raise ServerError(f"{self.label} did not accept connections within {timeout:.0f} s\n"
                                  f"  command: {' '.join(self.argv)}\n  log:\n{self._log_tail()}")
            tail = self._log_tail()
            self.proc = None
            if "in use" in tail and attempt < 2:  # lost a race for the port: try another
                continue
            raise ServerError(f"{self.label} exited with status {code} at start-up\n"
                              f"  command: {' '.join(self.argv)} --port {self.port}\n  log:\n{tail}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise ServerError(f"{self.label} is no longer running\n  log:\n{self._log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


# --------------------------------------------------------------------------
# client primitives (ftplib for the control connection, raw data sockets)


def session(srv: Server) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(HOST, srv.port, timeout=120)
    ftp.login(USER, PASSWORD)
    ftp.voidcmd("TYPE I")
    return ftp


def stor(ftp: ftplib.FTP, path: str, size: int, chunk: memoryview) -> float:
    """Upload ``size`` bytes; seconds from the STOR to the final reply."""
    t0 = time.perf_counter()
    sock = ftp.transfercmd(f"STOR {path}")
    try:
        left = size
        step = len(chunk)
        while left >= step:
            sock.sendall(chunk)
            left -= step
        if left:
            sock.sendall(chunk[:left])
    finally:
        sock.close()
    ftp.voidresp()
    return time.perf_counter() - t0


def retr(ftp: ftplib.FTP, cmd: str, buf: bytearray) -> tuple[float, int]:
    """RETR into a reused buffer; (seconds, bytes received)."""
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    sock = ftp.transfercmd(cmd)
    try:
        while True:
            n = sock.recv_into(view)
            if not n:
                break
            total += n
    finally:
        sock.close()
    ftp.voidresp()
    return time.perf_counter() - t0, total


def listing(ftp: ftplib.FTP, cmd: str, buf: bytearray) -> tuple[float, bytes]:
    """LIST/MLSD into a preallocated buffer; (seconds, data)."""
    filled = 0
    t0 = time.perf_counter()
    sock = ftp.transfercmd(cmd)
    try:
        while True:
            if filled == len(buf):
                buf.extend(bytes(len(buf)))
            n = sock.recv_into(memoryview(buf)[filled:])
            if not n:
                break
            filled += n
    finally:
        sock.close()
    ftp.voidresp()
    return time.perf_counter() - t0, bytes(buf[:filled])


def _reply(f) -> bytes:
    line = f.readline()
    if len(line) < 4:
        raise ftplib.error_proto(f"short reply {line!r}")
    if line[3:4] == b"-":
        end = line[:3] + b" "
        nxt = line
        while not nxt.startswith(end):
            nxt = f.readline()
            if not nxt:
                raise ftplib.error_proto("connection closed in a multi-line reply")
    return line[:3]


def raw_login(port: int) -> None:
    """connect, USER, PASS, QUIT on a raw socket."""
    with socket.create_connection((HOST, port), timeout=60) as s, s.makefile("rb") as f:
        for send, want in ((None, b"220"), (f"USER {USER}\r\n", b"331"),
                           (f"PASS {PASSWORD}\r\n", b"230"), ("QUIT\r\n", b"221")):
            if send:
                s.sendall(send.encode())
            code = _reply(f)
            if code != want:
                raise ftplib.error_reply(f"expected {want.decode()}, got {code.decode()}")


# --------------------------------------------------------------------------
# the figures: each function runs one round on one server and returns
# {row key: value}


def median(values):
    return statistics.median(values)


def fig_stor(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    size = sz.big_mib * MiB
    rates = []
    ftp = session(srv)
    try:
        for _ in range(sz.transfers):
            secs = stor(ftp, "/stor_test.bin", size, ctx["chunk"])
            got = int(ftp.sendcmd("SIZE /stor_test.bin").split()[1])
            if got != size:
                raise RuntimeError(f"{srv.label}: uploaded {size} bytes, server has {got}")
            ftp.delete("/stor_test.bin")  # so that every STOR creates a new file
            rates.append(size / MiB / secs)
    finally:
        ftp.close()
    return {"stor": median(rates)}


def fig_retr(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    size = sz.big_mib * MiB
    rates: dict[str, list[float]] = {"retr": [], "retr_m1": []}
    ftp = session(srv)
    try:
        for _ in range(sz.transfers):
            for key, path in (("retr", "/big.bin"), ("retr_m1", "/m1/big.bin")):
                secs, got = retr(ftp, f"RETR {path}", ctx["recv_buf"])
                if got != size:
                    raise RuntimeError(f"{srv.label}: RETR {path} gave {got} bytes, expected {size}")
                rates[key].append(size / MiB / secs)
        out = {key: median(values) for key, values in rates.items()}
    finally:
        ftp.close()
    return out


def _small_upload(ftp: ftplib.FTP, path: str, data: memoryview) -> tuple[float, float]:
    up = stor(ftp, path, len(data), data)
    t0 = time.perf_counter()
    ftp.delete(path)
    return up, time.perf_counter() - t0


def fig_small(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    data = ctx["chunk"][:1024]
    rnd = ctx["round"]
    ftp = session(srv)
    try:
        if srv is ctx["plain"]:
            _small_upload(ftp, "/qempty/warmup.bin", data)
            ups, dels = [], []
            for i in range(sz.uploads):
                u, d = _small_upload(ftp, f"/qempty/r{rnd}_{i}.bin", data)
                ups.append(u)
                dels.append(d)
            return {"small_empty": median(ups) * 1e3, "small_empty_dele": median(dels) * 1e3}
        # xxftpd: drop the ledgers so the first upload into each tree
        # rebuilds its usage by a scan (the one-time cost), then measure.
        for q in (ctx["qbig"], ctx["qempty"]):
            try:
                os.remove(q / ".xxftp" / "ledger")
            except FileNotFoundError:
                pass
        scan_big, _ = _small_upload(ftp, "/qbig/warmup.bin", data)
        scan_empty, _ = _small_upload(ftp, "/qempty/warmup.bin", data)
        ups = {"qbig": [], "qempty": []}
        dels = {"qbig": [], "qempty": []}
        for i in range(sz.uploads):
            for tree in ("qempty", "qbig"):
                u, d = _small_upload(ftp, f"/{tree}/r{rnd}_{i}.bin", data)
                ups[tree].append(u)
                dels[tree].append(d)
        # the ledger must still agree with the disk (usage = the files' bytes)
        reply = ftp.sendcmd("SITE QUOTA /qbig")
    finally:
        ftp.close()
    ledger = json.loads((ctx["qbig"] / ".xxftp" / "ledger").read_text())
    if ledger.get("used") != sz.quota_files * 1024 or ledger.get("pending"):
        raise RuntimeError(f"xxftpd: qbig ledger out of step after the uploads: {ledger} ({reply})")
    return {
        "small_empty": median(ups["qempty"]) * 1e3,
        "small_big": median(ups["qbig"]) * 1e3,
        "small_empty_dele": median(dels["qempty"]) * 1e3,
        "small_big_dele": median(dels["qbig"]) * 1e3,
        "scan_big": scan_big * 1e3,
        "scan_empty": scan_empty * 1e3,
    }


def fig_list(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    out = {}
    ftp = session(srv)
    try:
        for key, cmd in (("list", "LIST /list"), ("mlsd", "MLSD /list")):
            times = []
            for _ in range(sz.list_iters):
                secs, data = listing(ftp, cmd, ctx["list_buf"])
                times.append(secs)
            lines = data.count(b"\r\n")
            if lines != sz.list_files:
                raise RuntimeError(f"{srv.label}: {cmd} gave {lines} lines, expected {sz.list_files}")
            out[key] = median(times) * 1e3
    finally:
        ftp.close()
    return out


def fig_deep(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    out = {}
    ftp = session(srv)
    try:
        for key, line, want in (("cwd", f"CWD {DEEP_PATH}", "250"), ("size", f"SIZE {DEEP_FILE}", "213"),
                                ("mdtm", f"MDTM {DEEP_FILE}", "213")):
            times = []
            for _ in range(sz.cmd_iters):
                t0 = time.perf_counter_ns()
                resp = ftp.sendcmd(line)
                times.append(time.perf_counter_ns() - t0)
                if not resp.startswith(want):
                    raise RuntimeError(f"{srv.label}: {line} -> {resp}")
            out[key] = median(times) / 1e3
        if ftp.pwd() != DEEP_PATH:
            raise RuntimeError(f"{srv.label}: PWD after CWD is {ftp.pwd()!r}")
    finally:
        ftp.close()
    return out


def fig_logins(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    return {"logins": median(_logins(srv, sz) for _ in range(sz.login_reps))}


def _logins(srv: Server, sz: Sizes) -> float:
    """Seconds for ``sz.logins`` connect+login+QUIT, ``sz.burst`` at a time."""
    total = 0.0
    done = 0
    while done < sz.logins:
        n = min(sz.burst, sz.logins - done)
        barrier = threading.Barrier(n + 1)
        errors: list[BaseException] = []

        def one() -> None:
            try:
                barrier.wait()
                raw_login(srv.port)
            except BaseException as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        total += time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{srv.label}: {len(errors)} of {n} logins failed: {errors[0]!r}")
        done += n
    return total


FIGURES = [fig_stor, fig_retr, fig_small, fig_list, fig_deep, fig_logins]


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str
    fmt: str
    ratio: str = "x/p"  # "x/p": xxftpd / pyftpdlib; "big/empty"; "" none


def rows_for(sz: Sizes) -> list[Row]:
    n = f"{sz.quota_files:,}"
    return [
        Row("stor", f"1. STOR {sz.big_mib} MiB, single stream (xxftpd: home with quota)", "MiB/s", ".0f"),
        Row("retr", f"2a. RETR {sz.big_mib} MiB, single stream", "MiB/s", ".0f"),
        Row("retr_m1", f"2b. RETR {sz.big_mib} MiB through mount /m1 (pyftpdlib: real folder)", "MiB/s", ".0f"),
        Row("small_empty", "3a. 1 KiB STOR, empty quota tree (pyftpdlib: empty folder)", "ms", ".2f"),
        Row("small_big", f"3b. 1 KiB STOR, quota tree of {n} files (ratio: 3b/3a)", "ms", ".2f", "big/empty"),
        Row("scan_big", f"3c. initial scan: first 1 KiB STOR into the {n}-file tree", "ms", ".0f", ""),
        Row("list", f"4a. LIST of {sz.list_files:,} files", "ms", ".1f"),
        Row("mlsd", f"4b. MLSD of {sz.list_files:,} files", "ms", ".1f"),
        Row("cwd", "5a. CWD 10 folders deep (xxftpd: 3 nested mounts)", "µs", ".0f"),
        Row("size", "5b. SIZE 10 folders deep", "µs", ".0f"),
        Row("mdtm", "5c. MDTM 10 folders deep", "µs", ".0f"),
        Row("logins", f"6. {sz.logins} concurrent connect+login (bursts of {sz.burst})", "s", ".3f"),
    ]


# --------------------------------------------------------------------------
# report


def machine_info() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version
        pyftpdlib_version = version("pyftpdlib")
    except Exception:
        pyftpdlib_version = "unknown"
    try:
        from importlib.metadata import version
        xxftpd_version = version("xxftpd")
    except Exception:
        xxftpd_version = "unknown"
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    return {"nproc": nproc, "cpu": model, "python": platform.python_version(),
            "pyftpdlib": pyftpdlib_version, "xxftpd": xxftpd_version, "kernel": platform.release()}


def table(results: dict, rows: list[Row]) -> str:
    out = ["| figure | pyftpdlib | xxftpd | ratio |", "|---|---:|---:|---:|"]
    for row in rows:
        p = results["pyftpdlib"].get(row.key)
        x = results["xxftpd"].get(row.key)
        pm = median(p) if p else None
        xm = median(x) if x else None
        ps = f"{pm:{row.fmt}} {row.unit}" if pm is not None else "–"
        xs = f"{xm:{row.fmt}} {row.unit}" if xm is not None else "–"
        ratio = "–"
        if row.ratio == "x/p" and pm and xm is not None:
            ratio = f"{xm / pm:.2f}"
        elif row.ratio == "big/empty" and xm is not None and results["xxftpd"].get("small_empty"):
            ratio = f"{xm / median(results['xxftpd']['small_empty']):.2f}"
        out.append(f"| {row.title} | {ps} | {xs} | {ratio} |")
    return "\n".join(out)


def summary(results: dict, rows: list[Row]) -> list[dict]:
    figures = []
    for row in rows:
        entry = {"key": row.key, "figure": row.title, "unit": row.unit}
        for side in ("pyftpdlib", "xxftpd"):
            samples = results[side].get(row.key)
            entry[side] = median(samples) if samples else None
            entry[f"{side}_samples"] = samples or []
        if row.ratio == "x/p" and entry["pyftpdlib"] and entry["xxftpd"] is not None:
            entry["ratio"] = entry["xxftpd"] / entry["pyftpdlib"]
            entry["ratio_of"] = "xxftpd/pyftpdlib"
        elif row.ratio == "big/empty" and entry["xxftpd"] is not None:
            entry["ratio"] = entry["xxftpd"] / median(results["xxftpd"]["small_empty"])
            entry["ratio_of"] = "big tree/empty tree (xxftpd)"
        figures.append(entry)
    return figures


# --------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="xxftpd vs plain pyftpdlib, side by side.")
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="rounds per figure (default 3); medians are reported")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run (well under 30 s)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--tmpdir", metavar="DIR", help="where to build the data (default: the system temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the data folder and server logs at the end")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    sz = QUICK if args.quick else FULL
    started = time.monotonic()
    load_before = os.getloadavg()[0]

    base_dir = Path(args.tmpdir or tempfile.gettempdir())
    if not base_dir.is_dir():
        p.error(f"--tmpdir {base_dir} is not a folder")
    check_space(base_dir, sz)
    base = Path(tempfile.mkdtemp(prefix="xxftpd-bench-", dir=base_dir))
    servers: list[Server] = []
    try:
        log(f"building data in {base} ({'quick' if args.quick else 'full'} sizes) ...")
        data = build_data(base, sz)
        xx = Server("xxftpd", [sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(data["xroot"]),
                               "--host", HOST], base / "xxftpd.log")
        plain = Server("pyftpdlib", [sys.executable, str(HERE / "plain_server.py"), "--home", str(data["phome"]),
                                     "--host", HOST], base / "pyftpdlib.log")
        servers = [plain, xx]
        for srv in servers:
            srv.start()
            log(f"{srv.label} listening on {HOST}:{srv.port} (pid {srv.pid})")
        ctx = {
            "sizes": sz, "plain": plain, "xx": xx, "chunk": memoryview(data["chunk"]),
            "recv_buf": bytearray(RECV_BUF), "list_buf": bytearray(4 * MiB),
            "qbig": data["qbig"], "qempty": data["qempty"],
        }
        results: dict[str, dict[str, list[float]]] = {"pyftpdlib": {}, "xxftpd": {}}
        for rnd in range(args.repeat):
            ctx["round"] = rnd
            order = (plain, xx) if rnd % 2 == 0 else (xx, plain)
            for fig in FIGURES:
                for srv in order:
                    t0 = time.monotonic()
                    try:
                        values = fig(srv, ctx)
                    except (RuntimeError, EOFError, OSError, ftplib.Error) as err:
                        raise ServerError(f"figure {fig.__name__[4:]!r} failed on {srv.label}: {err!r}\n"
                                          f"  server log:\n{srv._log_tail()}") from err
                    srv.check_alive()
                    for key, value in values.items():
                        results[srv.label].setdefault(key, []).append(value)
                    log(f"round {rnd + 1}/{args.repeat} {fig.__name__[4:]:7s} {srv.label:9s} "
                        f"{time.monotonic() - t0:6.2f} s  "
                        + "  ".join(f"{k}={v:.4g}" for k, v in values.items()))
    finally:
        t0 = time.monotonic()
        for srv in servers:
            srv.stop()
        if args.keep:
            log(f"data and server logs kept in {base}")
        else:
            log(f"servers stopped in {time.monotonic() - t0:.1f} s; removing {base} ...")
            shutil.rmtree(base, ignore_errors=True)
            log(f"... done in {time.monotonic() - t0:.1f} s")
    elapsed = time.monotonic() - started
    rows = rows_for(sz)
    info = machine_info()
    info["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print()
    print(table(results, rows))
    print()
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, "
          f"pyftpdlib {info['pyftpdlib']}, xxftpd {info['xxftpd']}; "
          f"{'quick' if args.quick else 'full'} sizes, median of {args.repeat} round(s); "
          f"ratio = xxftpd/pyftpdlib; load average {load_before:.2f} at start, "
          f"{info['loadavg_1min'][1]:.2f} at end; run took {elapsed:.0f} s")
    if args.json:
        doc = {"machine": info, "sizes": asdict(sz), "quick": args.quick, "repeat": args.repeat,
               "elapsed_s": elapsed, "figures": summary(results, rows), "raw": results}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


def _terminated(signum, frame):
    raise KeyboardInterrupt  # unwinds through the clean-up


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    try:
        sys.exit(main())
    except ServerError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
