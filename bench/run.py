#!/usr/bin/env python3
"""Benchmark xxftpd against plain pyftpdlib, side by side in one run.

    python3 bench/run.py [--quick] [--repeat N] [--only NAME[,NAME]] [--json PATH]
                         [--tmpdir DIR] [--keep]

Both servers run as subprocesses on 127.0.0.1 (free ports) over the same
data, generated under a temporary folder that is removed at the end (the
FTPS figures use a second pair of servers with TLS on, the --workers
figure a third xxftpd with --workers 2). The runs are interleaved round by
round (the server that goes first alternates each round) and every figure
is the median over ``--repeat`` rounds. Figures at the noise floor of a
shared VM (RETR, FTPS, the fresh-server logins and memory) take three A/B
samples per round, each pair in alternating order. See bench/README.md for what each
figure measures.
"""

from __future__ import annotations

import argparse
import errno
import ftplib
import hashlib
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
USER, PASSWORD = "alice", "pw"
SLOW_USER, SLOW_PASSWORD = "bob", "pw-bob"  # xxftpd only: a scrypt password hash
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
    transfers: int  # STOR/RETR of the big file per sample (median taken)
    login_reps: int  # login figure runs per round (median taken)
    tls_transfers: int  # FTPS STOR/RETR of the big file per sample (median taken)
    held: tuple[int, int]  # connect+login kept open: a small and a large count
    conc_streams: int  # concurrent transfers in one batch
    conc_mib: int  # ... of files of this size
    load_logins: int  # logins while the big file is downloaded
    big_lists: tuple[int, ...] = (10_000, 200_000)  # files in the folders of figure 11
    storm: int = 400  # clients that send USER/PASS all at once beside a download


FULL = Sizes(big_mib=200, quota_files=100_000, quota_dirs=4_000, list_files=10_000,
             uploads=200, cmd_iters=300, list_iters=5, logins=100, burst=32,
             transfers=3, login_reps=3, tls_transfers=1, held=(100, 1000),
             conc_streams=100, conc_mib=10, load_logins=100)
QUICK = Sizes(big_mib=16, quota_files=2_000, quota_dirs=80, list_files=500,
              uploads=20, cmd_iters=30, list_iters=2, logins=100, burst=32,
              transfers=2, login_reps=2, tls_transfers=1, held=(100, 300),
              conc_streams=100, conc_mib=1, load_logins=20, big_lists=(500, 5_000),
              storm=100)


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


def make_empty(folder: Path, files: int) -> None:
    """``files`` empty files ``f000000``... in a new folder (200,000 in a
    few seconds: one ``open`` each, relative to the folder)."""
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(files):
            os.close(os.open(f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def xxftp_file(folder: Path, name: str, text: str) -> None:
    (folder / ".xxftp").mkdir(parents=True, exist_ok=True)
    (folder / ".xxftp" / name).write_text(text)


def xxftpd_command(*args: str) -> None:
    """Run an xxftpd admin command (``passwd``, ``cert``); stdin is the password, if any."""
    argv = [sys.executable, "-m", "xxftp_pyftpdlib", *args]
    stdin = SLOW_PASSWORD + "\n" if "passwd" in args else None
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise ServerError(f"{' '.join(argv)} failed with status {done.returncode}: "
                          f"{(done.stderr or done.stdout).strip()}")


def build_data(base: Path, sz: Sizes, need: set[str]) -> dict:
    """Both trees under ``base``; returns the paths the run needs.

    ``need`` is the set of figures to run: the 100,000-file tree, the
    listed folder, the files of the concurrent transfers, user bob and the
    certificate are only made for the figures that use them.
    """
    chunk = os.urandom(CHUNK)
    big = base / "src-big.bin"
    make_big_file(big, sz.big_mib * MiB, chunk)
    conc = need & {"conc", "workers"}
    if conc:
        small = base / "src-conc.bin"
        make_big_file(small, sz.conc_mib * MiB, chunk)

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
    make_flat(home / "list", sz.list_files if "list" in need else 0, b"y" * 100)
    for n in sz.big_lists if "biglist" in need else ():
        make_empty(home / f"big{n}", n)
    # quota trees for the small-upload figure
    qbig, qempty = xroot / "qbig", xroot / "qempty"
    for q in (qbig, qempty):
        q.mkdir()
        xxftp_file(q, "size", "100G\n")
    if "small" in need:
        log(f"writing {sz.quota_files:,} files in {sz.quota_dirs:,} folders ...")
        t0 = time.monotonic()
        make_many(qbig, sz.quota_files, sz.quota_dirs, b"z" * 1024)
        log(f"... done in {time.monotonic() - t0:.1f} s")
    # concurrent transfers: conc/f000.bin ... (hard links of one file), uploads into up/
    for folder in (home / "conc", home / "up"):
        folder.mkdir()
    if conc:
        for i in range(sz.conc_streams):
            os.link(small, home / "conc" / f"f{i:03d}.bin")
    if need & {"load", "storm"}:  # bob: a second user with a scrypt password, for the logins under load
        (xroot / SLOW_USER).mkdir()
        xxftpd_command("--root", str(xroot), "passwd", SLOW_USER, "--stdin")
    tls = None
    if "tls" in need:
        tls = base / "tls"
        xxftpd_command("cert", "--self-signed", "--out", str(tls))

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
    make_flat(phome / "list", sz.list_files if "list" in need else 0, b"y" * 100)
    for n in sz.big_lists if "biglist" in need else ():
        make_empty(phome / f"big{n}", n)
    (phome / "qempty").mkdir()
    for folder in (phome / "conc", phome / "up"):
        folder.mkdir()
    if conc:
        for i in range(sz.conc_streams):
            os.link(small, phome / "conc" / f"f{i:03d}.bin")
    return {"xroot": xroot, "phome": phome, "qbig": qbig, "qempty": qempty, "chunk": chunk, "tls": tls}


def check_space(folder: Path, sz: Sizes) -> None:
    need = (3 * sz.big_mib * MiB            # source + an upload + its temporary
            + sz.quota_files * 8192          # 1 KiB files (a block each, plus inode)
            + 2 * sz.list_files * 4096
            + (sz.conc_streams + 1) * sz.conc_mib * MiB  # a batch of concurrent uploads
            + 256 * MiB)                     # margin
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(f"bench: error: {folder} has {free / MiB:.0f} MiB free, "
                         f"the run needs about {need / MiB:.0f} MiB (use --tmpdir or --quick)")
    st = os.statvfs(folder)
    inodes = (sz.quota_files + sz.quota_dirs + 2 * sz.list_files + 2 * sum(sz.big_lists)
              + 4 * sz.conc_streams + 1000)
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
    """A server subprocess; ``argv`` gets ``--port N`` appended.

    ``role`` names the instance (``plain``, ``xx``, ``plain_tls``, ``xx_tls``,
    ``xx_w2``); ``column`` is the column of the table its figures go to.
    """

    user, password = USER, PASSWORD  # every instance serves the same account

    def __init__(self, label: str, argv: list[str], log_path: Path, role: str = "", column: str = "") -> None:
        self.label = label
        self.argv = argv
        self.log_path = log_path
        self.role = role or label
        self.column = column or label
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
    """A logged-in control connection in TYPE I (any server with ``port``,
    ``user`` and ``password``: ``bench/c_servers.py`` uses it too)."""
    ftp = ftplib.FTP()
    ftp.connect(HOST, srv.port, timeout=120)
    ftp.login(srv.user, srv.password)
    ftp.voidcmd("TYPE I")
    return ftp


class ResumingFTP_TLS(ftplib.FTP_TLS):
    """ftplib's FTPS client resuming the control connection's TLS session on
    each data connection, as lftp and curl do (xxftpd requires it by
    default: ``--tls-session-reuse required``); the same client for both servers."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


def tls_session(srv: Server) -> ftplib.FTP_TLS:
    """Explicit FTPS: AUTH TLS, login, PBSZ 0 + PROT P, TYPE I."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the run's own self-signed certificate
    ftp = ResumingFTP_TLS(context=context)
    ftp.connect(HOST, srv.port, timeout=120)
    ftp.auth()
    ftp.login(USER, PASSWORD)
    ftp.prot_p()
    ftp.voidcmd("TYPE I")
    return ftp


def close_data(sock: socket.socket) -> None:
    """Close a data socket; a TLS one after a TLS shutdown (as ftplib does).

    The shutdown also reads what the server sent and the client never
    asked for (TLS 1.3 session tickets): closing with unread data would
    make the kernel answer with a reset, which can cut the end of an
    upload that the server has not read yet.
    """
    if isinstance(sock, ssl.SSLSocket):
        try:
            sock.unwrap()
        except (OSError, ValueError):
            pass
    sock.close()


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
        close_data(sock)
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


class Ctrl:
    """A raw control connection.

    ``expect`` runs one command and checks the reply code (blocking, for
    set-up); ``feed`` reads what has arrived on a non-blocking socket and
    returns the complete replies, for the selector loop of the concurrent
    transfers. Replies are ``(code, first line)``; multi-line replies are
    read to their end.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self._end: bytes | None = None  # b"NNN " inside a multi-line reply
        self._first = b""
        self._ready: list[tuple[int, str]] = []

    def _parse(self) -> None:
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                return
            line, self._buf = self._buf[:i].rstrip(b"\r"), self._buf[i + 1:]
            if self._end is None:
                if len(line) < 3 or not line[:3].isdigit():
                    raise ftplib.error_proto(f"bad reply line {line[:80]!r}")
                if line[3:4] == b"-":
                    self._end, self._first = line[:3] + b" ", line
                    continue
                self._ready.append((int(line[:3]), line.decode("latin-1")))
            elif line.startswith(self._end):
                self._ready.append((int(line[:3]), self._first.decode("latin-1")))
                self._end = None

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("control connection closed by the server")
        self._buf += data
        self._parse()

    def reply(self) -> tuple[int, str]:
        while not self._ready:
            self._recv()
        return self._ready.pop(0)

    def feed(self) -> list[tuple[int, str]]:
        try:
            self._recv()
        except BlockingIOError:
            pass
        ready, self._ready = self._ready, []
        return ready

    def send(self, line: str) -> None:
        data = (line + "\r\n").encode()
        if self.sock.gettimeout() == 0:  # non-blocking: a command is far smaller than the socket buffer
            if self.sock.send(data) != len(data):
                raise OSError(f"short send of {line.split()[0]}")
        else:
            self.sock.sendall(data)

    def expect(self, line: str | None, want: int) -> str:
        if line is not None:
            self.send(line)
        code, text = self.reply()
        if code != want:
            shown = "PASS ****" if line and line.startswith("PASS ") else line or "greeting"
            raise ftplib.error_reply(f"{shown}: expected {want}, got {text!r}")
        return text

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def ctrl_login(port: int, user: str = USER, password: str = PASSWORD) -> Ctrl:
    """connect, read the greeting, USER, PASS: a logged-in ``Ctrl``."""
    ctrl = Ctrl(socket.create_connection((HOST, port), timeout=60))
    try:
        ctrl.expect(None, 220)
        ctrl.expect(f"USER {user}", 331)
        ctrl.expect(f"PASS {password}", 230)
    except BaseException:
        ctrl.close()
        raise
    return ctrl


def login_quit(port: int, user: str, password: str) -> None:
    ctrl = ctrl_login(port, user, password)
    try:
        ctrl.expect("QUIT", 221)
    finally:
        ctrl.close()


def login_bursts(srv: Server, ctx: dict, count: int, user: str = USER, password: str = PASSWORD,
                 keep: bool = True) -> tuple[float, list[Ctrl]]:
    """``count`` connect+login, ``sz.burst`` at a time on the client's thread pool.

    A burst starts when the previous one is logged in. With ``keep``, all
    the connections stay open and are returned; without, each logs out
    (QUIT). Returns the summed time of the bursts and the connections.
    """
    burst = ctx["sizes"].burst
    pool: ThreadPoolExecutor = ctx["pool"]
    held: list[Ctrl] = []
    total = 0.0
    done = 0
    try:
        while done < count:
            n = min(burst, count - done)
            t0 = time.perf_counter()
            if keep:
                futures = [pool.submit(ctrl_login, srv.port, user, password) for _ in range(n)]
            else:
                futures = [pool.submit(login_quit, srv.port, user, password) for _ in range(n)]
            errors = []
            for future in futures:
                try:
                    ctrl = future.result()
                except Exception as err:  # reported below, after the burst
                    errors.append(err)
                else:
                    if ctrl is not None:
                        held.append(ctrl)
            total += time.perf_counter() - t0
            if errors:
                raise RuntimeError(f"{srv.label}: {len(errors)} of {n} logins failed "
                                   f"({done + n - len(errors)} of {count} made so far): {errors[0]!r}")
            done += n
    except BaseException:
        close_all(held)
        raise
    return total, held


def close_all(ctrls: list[Ctrl]) -> None:
    for ctrl in ctrls:
        ctrl.close()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (forked workers, helper processes)."""
    pids = [pid]
    i = 0
    while i < len(pids):
        try:
            tasks = os.listdir(f"/proc/{pids[i]}/task")
        except OSError:
            tasks = []
        for tid in tasks:
            try:
                with open(f"/proc/{pids[i]}/task/{tid}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
            except OSError:
                pass
        i += 1
    return pids


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) a server and its child processes have used."""
    ticks = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def pss_mib(pid: int) -> float:
    """Proportional set size of a server and its child processes, MiB."""
    kib = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        kib += int(line.split()[1])
                        break
        except OSError:  # gone meanwhile
            pass
    return kib / 1024


# --------------------------------------------------------------------------
# concurrent transfers: one client thread drives every connection with a
# selector, so the client is not what limits the batch

_CTRL, _CONNECT, _RECV, _SEND = "ctrl", "connect", "recv", "send"


class _Transfer:
    __slots__ = ("ctrl", "path", "data", "stage", "bytes", "final", "data_done")

    def __init__(self, ctrl: Ctrl, path: str) -> None:
        self.ctrl = ctrl
        self.path = path
        self.data: socket.socket | None = None
        self.stage = "pasv"  # -> connect -> cmd (sent RETR/STOR) -> data (got 150)
        self.bytes = 0
        self.final = False  # the 226 arrived
        self.data_done = False  # the data connection is closed


def _thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def batch(srv: Server, ctrls: list[Ctrl], verb: str, paths: list[str], size: int,
          chunk: memoryview, buf: bytearray) -> tuple[float, float]:
    """Run ``verb`` (RETR or STOR) of ``paths`` at once, one per control
    connection. Returns the seconds from the first PASV to the last final
    reply, and the share of that time the client thread was on a CPU (near
    1.0 would mean the client limits the batch)."""
    sel = selectors.DefaultSelector()
    view = memoryview(buf)
    step = len(chunk)
    transfers = [_Transfer(c, p) for c, p in zip(ctrls, paths)]
    left = len(transfers)

    def finished(x: _Transfer) -> bool:
        if x.final and x.data_done:
            sel.unregister(x.ctrl.sock)
            return True
        return False

    def end_data(x: _Transfer) -> None:
        sel.unregister(x.data)
        x.data.close()
        x.data_done = True

    cpu0 = _thread_cpu()
    t0 = time.perf_counter()
    try:
        for x in transfers:
            x.ctrl.sock.setblocking(False)
            x.ctrl.send("PASV")
            sel.register(x.ctrl.sock, selectors.EVENT_READ, (x, _CTRL))
        while left:
            events = sel.select(timeout=120)
            if not events:
                raise RuntimeError(f"{srv.label}: {verb} batch stalled for 120 s, {left} transfers unfinished")
            for key, _mask in events:
                x, what = key.data
                if what is _RECV:
                    try:
                        n = x.data.recv_into(view)
                    except BlockingIOError:
                        continue
                    if n:
                        x.bytes += n
                        continue
                    end_data(x)
                elif what is _SEND:
                    try:
                        x.bytes += x.data.send(chunk[:min(step, size - x.bytes)])
                    except BlockingIOError:
                        continue
                    if x.bytes < size:
                        continue
                    end_data(x)  # all sent: close (the kernel still delivers what it holds)
                elif what is _CONNECT:
                    err = x.data.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"data connection for {x.path}: {os.strerror(err)}")
                    sel.unregister(x.data)
                    x.ctrl.send(f"{verb} {x.path}")
                    x.stage = "cmd"
                    if verb == "RETR":  # data may come before the 150 is read
                        sel.register(x.data, selectors.EVENT_READ, (x, _RECV))
                else:
                    for code, text in x.ctrl.feed():
                        if code == 227 and x.stage == "pasv":
                            _host, port = ftplib.parse227(text)  # the address is ours, as in ftplib
                            x.data = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                            x.data.setblocking(False)
                            err = x.data.connect_ex((HOST, port))
                            if err not in (0, errno.EINPROGRESS):
                                raise OSError(err, f"data connection for {x.path}: {os.strerror(err)}")
                            x.stage = "connect"
                            sel.register(x.data, selectors.EVENT_WRITE, (x, _CONNECT))
                        elif code in (125, 150) and x.stage == "cmd":
                            x.stage = "data"
                            if verb == "STOR":
                                sel.register(x.data, selectors.EVENT_WRITE, (x, _SEND))
                        elif code == 226 and x.stage in ("cmd", "data"):
                            x.final = True
                        else:
                            raise RuntimeError(f"{srv.label}: {verb} {x.path}: unexpected reply {text!r} "
                                               f"at stage {x.stage}")
                if finished(x):
                    left -= 1
        elapsed = time.perf_counter() - t0
        cpu = (_thread_cpu() - cpu0) / elapsed
    finally:
        for x in transfers:
            if x.data is not None and not x.data_done:
                x.data.close()
            x.ctrl.sock.settimeout(60)
        sel.close()
    short = [x for x in transfers if x.bytes != size]
    if short:
        raise RuntimeError(f"{srv.label}: {verb} {short[0].path} moved {short[0].bytes} bytes, expected {size} "
                           f"({len(short)} transfers short)")
    return elapsed, cpu


# --------------------------------------------------------------------------
# the figures: each function runs one round on one server and returns
# {row key: value}


def median(values):
    return statistics.median(values)


def stor_rate(ftp: ftplib.FTP, label: str, size: int, chunk: memoryview) -> float:
    """One STOR of a new file, checked with SIZE and deleted; MiB/s."""
    secs = stor(ftp, "/stor_test.bin", size, chunk)
    got = int(ftp.sendcmd("SIZE /stor_test.bin").split()[1])
    if got != size:
        raise RuntimeError(f"{label}: uploaded {size} bytes, server has {got}")
    ftp.delete("/stor_test.bin")  # so that every STOR creates a new file
    return size / MiB / secs


def retr_rate(ftp: ftplib.FTP, label: str, path: str, size: int, buf: bytearray) -> float:
    """One RETR of ``path``, checked for its size; MiB/s."""
    secs, got = retr(ftp, f"RETR {path}", buf)
    if got != size:
        raise RuntimeError(f"{label}: RETR {path} gave {got} bytes, expected {size}")
    return size / MiB / secs


def fig_stor(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    ftp = session(srv)
    try:
        rates = [stor_rate(ftp, srv.label, sz.big_mib * MiB, ctx["chunk"]) for _ in range(sz.transfers)]
    finally:
        ftp.close()
    return {"stor": median(rates)}


def fig_retr(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    rates: dict[str, list[float]] = {"retr": [], "retr_m1": []}
    ftp = session(srv)
    try:
        for _ in range(sz.transfers):
            for key, path in (("retr", "/big.bin"), ("retr_m1", "/m1/big.bin")):
                rates[key].append(retr_rate(ftp, srv.label, path, sz.big_mib * MiB, ctx["recv_buf"]))
    finally:
        ftp.close()
    return {key: median(values) for key, values in rates.items()}


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


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _on_cpu(pid: int) -> float:
    """Seconds the main thread of process ``pid`` (a server's IO loop) has run on a CPU."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def _noops(srv: Server, stop: threading.Event, samples: list[tuple[float, float, float]]) -> None:
    """Another session's NOOPs, back to back until ``stop``: (sent at,
    seconds to the reply, seconds the server's IO loop ran on a CPU
    meanwhile: the work the NOOP waited for, without what the machine's
    scheduler took)."""
    ftp = session(srv)
    pid = srv.pid
    try:
        while not stop.is_set():
            c0, t0 = _on_cpu(pid), time.perf_counter()
            ftp.voidcmd("NOOP")
            t1, c1 = time.perf_counter(), _on_cpu(pid)
            samples.append((t0, t1 - t0, c1 - c0))
    finally:
        ftp.close()


def fig_biglist(srv: Server, ctx: dict) -> dict:
    """LIST, NLST and MLSD of folders of ``sz.big_lists`` files, each on a
    freshly started server (after a listing of the home) while another
    session sends NOOPs back to back:
    the listing's time, the server's peak memory growth during it (VmHWM,
    reset before it, minus VmRSS before it), the median and worst wait of
    the NOOPs in flight during it, and the most server work one of them
    waited for; also the NOOPs' median before any listing runs."""
    sz: Sizes = ctx["sizes"]
    out = {}
    quiet: list[float] = []
    for i, (n, cmd) in enumerate((n, cmd) for n in sz.big_lists for cmd in ("LIST", "NLST", "MLSD")):
        if i:  # a fresh server for each: what a listing leaves allocated would hide the next one's growth
            srv.stop()
            srv.start()
        ftp = session(srv)
        for warm in ("LIST /", "NLST /", "MLSD /"):  # what any listing loads first is not this one's cost
            listing(ftp, warm, ctx["list_buf"])
        stop, samples = threading.Event(), []
        prober = threading.Thread(target=_noops, args=(srv, stop, samples), daemon=True)
        try:
            prober.start()
            while len(samples) < 50 and prober.is_alive():  # logged in and answering
                time.sleep(0.01)
            try:
                with open(f"/proc/{srv.pid}/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current VmRSS
            except OSError:
                pass
            before = _proc_status(srv.pid)["VmRSS"]
            start = time.perf_counter()
            secs, data = listing(ftp, f"{cmd} /big{n}", ctx["list_buf"])
            end = time.perf_counter()
            peak = _proc_status(srv.pid)["VmHWM"]
        finally:
            stop.set()
            prober.join(30)
            ftp.close()
        lines = data.count(b"\r\n")
        if lines != n:
            raise RuntimeError(f"{srv.label}: {cmd} gave {lines} lines, expected {n}")
        quiet += [wait for sent, wait, _ in samples if sent + wait < start]
        during = [(wait, work) for sent, wait, work in samples if sent <= end and sent + wait >= start]  # in flight
        key = f"bl_{cmd.lower()}_{n}"
        out[key] = secs * 1e3
        out[key + "_mem"] = max(0, peak - before) / MiB
        out[key + "_noop_med"] = median([wait for wait, _ in during]) * 1e3
        out[key + "_noop_max"] = max(wait for wait, _ in during) * 1e3
        out[key + "_noop_work"] = max(work for _, work in during) * 1e3
    out["bl_noop_quiet"] = median(quiet) * 1e3
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


def fig_held(srv: Server, ctx: dict) -> dict:
    """connect+login of a small and a large number of clients, all kept
    connected; the server's memory before (a fresh server) and once they
    all are logged in."""
    sz: Sizes = ctx["sizes"]
    out = {"pss_idle": pss_mib(srv.pid)}
    for count in sz.held:
        cpu = server_cpu(srv.pid)
        secs, held = login_bursts(srv, ctx, count)
        try:
            out[f"held_{count}"] = secs
            out[f"held_{count}_server_cpu"] = server_cpu(srv.pid) - cpu
            out[f"pss_{count}"] = pss_mib(srv.pid)
        finally:
            close_all(held)
        login_quit(srv.port, USER, PASSWORD)  # the server has taken in the closes before the next count
    most = max(sz.held)
    out["pss_per_conn"] = (out[f"pss_{most}"] - out["pss_idle"]) * 1024 / most
    return out


def fig_tls(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    size = sz.big_mib * MiB
    stors, retrs = [], []
    ftp = tls_session(srv)
    try:
        if srv.label not in ctx["tls_info"]:  # what the data connections negotiate (not timed)
            sock = ftp.transfercmd("NLST /m2")
            if not isinstance(sock, ssl.SSLSocket):
                raise RuntimeError(f"{srv.label}: the data connection is not TLS after PROT P")
            info = f"{sock.version()} {sock.cipher()[0]}"
            while sock.recv(65536):
                pass
            close_data(sock)
            ftp.voidresp()
            ctx["tls_info"][srv.label] = info
            log(f"{srv.label}: FTPS data connections use {info}")
        for _ in range(sz.tls_transfers):
            secs = stor(ftp, "/tls_test.bin", size, ctx["chunk"])
            got = int(ftp.sendcmd("SIZE /tls_test.bin").split()[1])
            if got != size:
                raise RuntimeError(f"{srv.label}: FTPS upload of {size} bytes, server has {got}")
            ftp.delete("/tls_test.bin")
            stors.append(size / MiB / secs)
            secs, got = retr(ftp, "RETR /big.bin", ctx["recv_buf"])
            if got != size:
                raise RuntimeError(f"{srv.label}: FTPS RETR /big.bin gave {got} bytes, expected {size}")
            retrs.append(size / MiB / secs)
    finally:
        ftp.close()
    return {"tls_stor": median(stors), "tls_retr": median(retrs)}


def _concurrent(srv: Server, ctx: dict) -> tuple[float, float, dict]:
    """A batch of concurrent RETRs, then one of STORs of new files (checked
    with SIZE and deleted afterwards); the seconds of each batch, and the
    client's CPU share during each (for the JSON file)."""
    sz: Sizes = ctx["sizes"]
    n, size = sz.conc_streams, sz.conc_mib * MiB
    _secs, ctrls = login_bursts(srv, ctx, n)
    try:
        for ctrl in ctrls:
            ctrl.expect("TYPE I", 200)
        retr_secs, retr_cpu = batch(srv, ctrls, "RETR", [f"/conc/f{i:03d}.bin" for i in range(n)], size,
                                    ctx["chunk"], ctx["recv_buf"])
        names = [f"/up/{srv.role}_{ctx['round']}_{i:03d}.bin" for i in range(n)]
        stor_secs, stor_cpu = batch(srv, ctrls, "STOR", names, size, ctx["chunk"], ctx["recv_buf"])
        first = ctrls[0]
        for name in names:
            got = int(first.expect(f"SIZE {name}", 213).split()[1])
            if got != size:
                raise RuntimeError(f"{srv.label}: concurrent STOR {name}: server has {got} bytes, sent {size}")
            first.expect(f"DELE {name}", 250)
    finally:
        close_all(ctrls)
    return retr_secs, stor_secs, {"retr_client_cpu": retr_cpu, "stor_client_cpu": stor_cpu}


def fig_conc(srv: Server, ctx: dict) -> dict:
    retr_secs, stor_secs, cpu = _concurrent(srv, ctx)
    return {"conc_retr": retr_secs, "conc_stor": stor_secs, **{f"conc_{k}": v for k, v in cpu.items()}}


def fig_workers(srv: Server, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    retr_secs, stor_secs, cpu = _concurrent(srv, ctx)
    mib = sz.conc_streams * sz.conc_mib
    w = "w2" if srv.role == "xx_w2" else "w1"
    return {f"{w}_retr": mib / retr_secs, f"{w}_stor": mib / stor_secs, **{f"{w}_{k}": v for k, v in cpu.items()}}


def _scrape_every_second(port: int, stop: threading.Event) -> None:
    """What Prometheus does to a server with --metrics (15 s is its default; this is 15x as often)."""
    while not stop.wait(1.0):
        try:
            with socket.create_connection((HOST, port), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
        except OSError as err:
            raise RuntimeError(f"scraping the metrics failed: {err}") from None


def fig_metrics(srv: Server, ctx: dict) -> dict:
    """STOR, RETR and logins on xxftpd with --metrics off (13a, c, e) and
    on, scraped every second meanwhile (13b, d, f)."""
    on = "--metrics" in srv.argv
    stop = threading.Event()
    scraper = None
    if on:
        port = int(srv.argv[srv.argv.index("--metrics") + 1].rpartition(":")[2])
        scraper = threading.Thread(target=_scrape_every_second, args=(port, stop), daemon=True)
        scraper.start()
    try:
        sz: Sizes = ctx["sizes"]
        cpu = [server_cpu(srv.pid)]
        ftp = session(srv)
        try:
            stor = median([stor_rate(ftp, srv.label, sz.big_mib * MiB, ctx["chunk"]) for _ in range(sz.transfers)])
            cpu.append(server_cpu(srv.pid))
            retr = median([retr_rate(ftp, srv.label, "/big.bin", sz.big_mib * MiB, ctx["recv_buf"])
                           for _ in range(sz.transfers)])
            cpu.append(server_cpu(srv.pid))
        finally:
            ftp.close()
        logins = median(_logins(srv, sz) for _ in range(sz.login_reps))
        cpu.append(server_cpu(srv.pid))
    finally:
        stop.set()
        if scraper is not None:
            scraper.join(10)
    side = "m1" if on else "m0"
    return {f"{side}_stor": stor, f"{side}_retr": retr, f"{side}_logins": logins,
            f"{side}_stor_cpu": (cpu[1] - cpu[0]) / sz.transfers * 1000,
            f"{side}_retr_cpu": (cpu[2] - cpu[1]) / sz.transfers * 1000,
            f"{side}_logins_cpu": (cpu[3] - cpu[2]) / sz.login_reps * 1000}


class _Port:
    """What ``login_bursts`` needs of a server, in the load process."""

    def __init__(self, port: int, label: str) -> None:
        self.port = port
        self.label = label


def _login_load(conn, port: int, label: str, sizes: Sizes, user: str, password: str) -> None:
    """In a separate process (its own interpreter lock, so its threads do not
    slow the downloading thread): wait for "go", make ``sizes.load_logins``
    logins in bursts, send back (start, end, summed burst seconds) on the
    monotonic clock that ``time.perf_counter`` reads in every process, or
    an error. Ends quietly when the benchmark has gone (closed pipe)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the benchmark stops this process
    pool = ThreadPoolExecutor(max_workers=sizes.burst)
    try:
        warm = threading.Barrier(sizes.burst)
        for future in [pool.submit(warm.wait) for _ in range(sizes.burst)]:
            future.result()
        conn.send("ready")
        if conn.recv() != "go":
            return
        t0 = time.perf_counter()
        try:
            secs, _ = login_bursts(_Port(port, label), {"sizes": sizes, "pool": pool}, sizes.load_logins,
                                   user, password, keep=False)
        except Exception as err:
            conn.send(("error", repr(err)))
        else:
            conn.send((t0, time.perf_counter(), secs))
    except (EOFError, OSError):  # the benchmark closed the pipe
        pass
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        conn.close()


def _retr_loop(srv: Server, ctx: dict, ftp: ftplib.FTP, flowing: Callable[[], None],
               stop: Callable[[], bool]) -> list[tuple[float, int]]:
    """Download the big file again and again. ``flowing`` is called once
    the first download has its first MiBs; after that, the loop ends at the
    end of the first download after which ``stop()`` is true. Returns
    (time, bytes) of every recv, the time being ``perf_counter`` after it."""
    sz: Sizes = ctx["sizes"]
    size = sz.big_mib * MiB
    start_after = min(8 * MiB, size // 4)
    view = memoryview(ctx["recv_buf"])
    marks: list[tuple[float, int]] = []
    clock = time.perf_counter
    started = False
    deadline = time.monotonic() + 600
    while True:
        got = 0
        sock = ftp.transfercmd("RETR /big.bin")
        try:
            while True:
                n = sock.recv_into(view)
                if not n:
                    break
                marks.append((clock(), n))
                got += n
                if not started and got >= start_after:
                    started = True
                    flowing()
        finally:
            sock.close()
        ftp.voidresp()
        if got != size:
            raise RuntimeError(f"{srv.label}: RETR /big.bin gave {got} bytes, expected {size}")
        if started and stop():
            return marks
        if time.monotonic() > deadline:
            raise RuntimeError(f"{srv.label}: the load beside the download did not end within 600 s")


def _rate(marks: list[tuple[float, int]], t0: float, t1: float) -> float:
    """MiB/s of the bytes received between t0 and t1."""
    return sum(n for t, n in marks if t0 <= t <= t1) / MiB / (t1 - t0)


def _retr_with_logins(srv: Server, ctx: dict, ftp: ftplib.FTP, target: Server, user: str,
                      password: str) -> tuple[float, float, float]:
    """RETR from ``srv`` while ``sz.load_logins`` clients log in to ``target``
    (from another process). Returns (MiB/s while they log in, the seconds
    they took from the first to the last, the summed burst seconds)."""
    import multiprocessing

    sz: Sizes = ctx["sizes"]
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    proc = mp.Process(target=_login_load, args=(child, target.port, target.label, sz, user, password),
                      name="login-load", daemon=True)
    proc.start()
    child.close()
    answered = False
    try:
        ready = parent.recv() if parent.poll(60) else "nothing within 60 s"
        if ready != "ready":
            raise RuntimeError(f"the login process did not start: {ready!r}")
        marks = _retr_loop(srv, ctx, ftp, lambda: parent.send("go"), parent.poll)
        try:
            reply = parent.recv()
        except EOFError:
            reply = ("error", "the login process ended without an answer")
        answered = True
        if reply[0] == "error":
            raise RuntimeError(f"{target.label}: logins beside the download failed: {reply[1]}")
        t0, t1, login_secs = reply
        return _rate(marks, t0, t1), t1 - t0, login_secs
    finally:
        parent.close()
        if not answered:  # an error or an interruption here: don't wait for its logins
            proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def fig_load(srv: Server, ctx: dict) -> dict:
    """RETR throughput while ``sz.load_logins`` clients log in (xxftpd: as
    bob, whose password is a scrypt hash), then alone over a window of about
    the same length. On xxftpd also with the same logins sent to a second
    xxftpd process instead: what the machine's CPUs leave to the download
    when the hashing runs elsewhere, as a reference for the ratio."""
    out = {}
    ftp = session(srv)
    try:
        if srv.column == "xxftpd":
            loaded, window, login_secs = _retr_with_logins(srv, ctx, ftp, srv, SLOW_USER, SLOW_PASSWORD)
            side, _, _ = _retr_with_logins(srv, ctx, ftp, ctx["side"], SLOW_USER, SLOW_PASSWORD)
        else:
            loaded, window, login_secs = _retr_with_logins(srv, ctx, ftp, srv, USER, PASSWORD)
            side = None
        quiet = min(max(window, 0.5), 2.0)
        start: list[float] = []
        marks = _retr_loop(srv, ctx, ftp, lambda: start.append(time.perf_counter()),
                           lambda: time.perf_counter() >= start[0] + quiet)
        alone = _rate(marks, start[0], start[0] + quiet)
    finally:
        ftp.close()
    out = {"load_alone": alone, "load_retr": loaded, "load_ratio": loaded / alone, "load_logins": login_secs}
    if side is not None:
        out.update(load_side=side, load_side_ratio=side / alone)
    return out


STORM_CONNECTING = 64  # connections of a storm not greeted yet, at most (under the servers' listen backlog)
STORM_PATIENCE = 300.0  # seconds a storm client waits for an answer


def _storm(conn, port: int, count: int, user: str, password: str) -> None:
    """In a separate process: wait for "go", then open ``count`` control
    connections as fast as the server greets them (at most
    ``STORM_CONNECTING`` not greeted yet: beyond its listen backlog a
    server's kernel drops connections, which measures the kernel) and send
    USER (``user`` formatted with the client's number) and PASS on each as
    soon as it is greeted, all driven by one selector. Sends back (start,
    time of the last answer, {reply code: clients}) on the monotonic clock,
    or an error; each connection is closed once PASS is answered (or the
    server closed it, or it waited ``STORM_PATIENCE`` seconds)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the benchmark stops this process
    socks: list[socket.socket] = []
    try:
        conn.send("ready")
        if conn.recv() != "go":
            return
        sel = selectors.DefaultSelector()
        codes: dict[str, int] = {}
        t0 = last = time.perf_counter()
        opened = connecting = 0
        left = count
        while left:
            while opened < count and connecting < STORM_CONNECTING:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((HOST, port))
                socks.append(sock)
                # [buffer, replies so far, lines to send after the greeting and after USER, opened at]
                sel.register(sock, selectors.EVENT_READ, [b"", 0, [f"USER {user.format(opened)}\r\n",
                                                                   f"PASS {password}\r\n"], time.perf_counter()])
                opened += 1
                connecting += 1
            now = time.perf_counter()
            for key in list(sel.get_map().values()):
                if now - key.data[3] > STORM_PATIENCE:
                    codes["no answer"] = codes.get("no answer", 0) + 1
                    connecting -= key.data[1] == 0
                    left -= 1
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
            for key, _ in sel.select(timeout=1.0):
                sock, state = key.fileobj, key.data
                greeted = state[1] > 0
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as err:
                    data, code = None, f"error {err.errno}"
                else:
                    code = "closed"
                if data:
                    state[0] += data
                    while b"\n" in state[0] and data is not None:
                        line, state[0] = state[0].split(b"\n", 1)
                        if line[3:4] == b"-":
                            continue  # a multi-line reply goes on
                        state[1] += 1
                        if line[:1] in (b"4", b"5") or state[1] == 3:  # refused, or the answer to PASS
                            data, code = None, line[:3].decode(errors="replace")
                        else:
                            sock.send(state[2][state[1] - 1].encode())
                if not greeted and (state[1] > 0 or data is None or not data):
                    connecting -= 1
                if data:
                    continue
                codes[code] = codes.get(code, 0) + 1
                last = time.perf_counter()
                left -= 1
                sel.unregister(sock)
                sock.close()
        conn.send((t0, last, codes))
    except (EOFError, OSError) as err:  # the benchmark closed the pipe, or no more sockets
        try:
            conn.send(("error", repr(err)))
        except OSError:
            pass
    finally:
        for sock in socks:
            sock.close()
        conn.close()


def _noop_probe(conn, port: int, user: str, password: str) -> None:
    """In a separate process: a logged-in session that sends NOOP every
    20 ms until "stop", then sends back [(time sent, round trip seconds)]."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctrl = ctrl_login(port, user, password)
        conn.send("ready")
        samples = []
        while not conn.poll(0.02):
            t = time.perf_counter()
            ctrl.expect("NOOP", 200)
            samples.append((t, time.perf_counter() - t))
        conn.recv()
        ctrl.close()
        conn.send(samples)
    except (EOFError, OSError, ftplib.Error) as err:
        try:
            conn.send(("error", repr(err)))
        except OSError:
            pass
    finally:
        conn.close()


def _helper(target, *args):
    """A spawned helper process (its own interpreter lock) and our end of its pipe, once it is ready."""
    import multiprocessing

    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    proc = mp.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    child.close()
    ready = parent.recv() if parent.poll(60) else "nothing within 60 s"
    if ready != "ready":
        proc.terminate()
        raise RuntimeError(f"helper {target.__name__} did not start: {ready!r}")
    return proc, parent


def _end_helper(proc, pipe) -> None:
    pipe.close()
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join()


def fig_storm(srv: Server, ctx: dict) -> dict:
    """RETR of the big file while ``sz.storm`` clients send USER/PASS as fast
    as they are greeted (unknown users; on xxftpd also bob, a scrypt hash,
    with a wrong password), against RETR alone right after each storm; NOOP
    round trips on another session throughout (a third process), idle,
    during RETR alone and during each storm; the storm's own time and how
    many logins got 421."""
    sz: Sizes = ctx["sizes"]
    storms = [("unknown", "nosuchuser{}", "x")]
    if srv.column == "xxftpd":
        storms.append(("scrypt", SLOW_USER, "wrong"))
    out: dict[str, float] = {}
    windows: dict[str, tuple[float, float]] = {}
    ftp = session(srv)
    probe, probe_pipe = _helper(_noop_probe, srv.port, USER, PASSWORD)
    try:
        t = time.perf_counter()
        time.sleep(1.0)
        windows["idle"] = (t, time.perf_counter())
        alone = []
        for label, user, password in storms:
            proc, pipe = _helper(_storm, srv.port, sz.storm, user, password)
            try:
                marks = _retr_loop(srv, ctx, ftp, lambda: pipe.send("go"), pipe.poll)
                reply = pipe.recv()
            finally:
                _end_helper(proc, pipe)
            if reply[0] == "error":
                raise RuntimeError(f"{srv.label}: the {label} storm failed: {reply[1]}")
            t0, t1, codes = reply
            unexpected = {c: n for c, n in codes.items() if c not in ("530", "421")}
            if unexpected:
                raise RuntimeError(f"{srv.label}: {label} storm: unexpected answers {unexpected} ({codes})")
            windows[label] = (t0, t1)
            out[f"storm_{label}_retr"] = _rate(marks, t0, t1)
            out[f"storm_{label}_secs"] = t1 - t0
            out[f"storm_{label}_421"] = codes.get("421", 0)
            # the reference: RETR alone right after, over a window of about the storm's length
            quiet = min(max(t1 - t0, 2.0), 10.0)
            start: list[float] = []
            marks = _retr_loop(srv, ctx, ftp, lambda: start.append(time.perf_counter()),
                               lambda: time.perf_counter() >= start[0] + quiet)
            windows[f"{label} alone"] = (start[0], start[0] + quiet)
            alone.append(_rate(marks, start[0], start[0] + quiet))
            out[f"storm_{label}_ratio"] = out[f"storm_{label}_retr"] / alone[-1]
        out["storm_alone"] = median(alone)
        probe_pipe.send("stop")
        samples = probe_pipe.recv() if probe_pipe.poll(60) else ("error", "no NOOP samples within 60 s")
    finally:
        ftp.close()
        _end_helper(probe, probe_pipe)
    if samples and samples[0] == "error":
        raise RuntimeError(f"{srv.label}: the NOOP probe failed: {samples[1]}")
    def noop_median(names: list[str]) -> float | None:
        inside = [secs for t, secs in samples for name in names if windows[name][0] <= t <= windows[name][1]]
        return median(inside) * 1000 if inside else None

    found = {"storm_noop_idle": noop_median(["idle"]),
             "storm_noop_retr": noop_median([f"{label} alone" for label, _, _ in storms]),
             **{f"storm_{label}_noop": noop_median([label]) for label, _, _ in storms}}
    out.update({key: value for key, value in found.items() if value is not None})
    for label, _, _ in storms:
        if f"storm_{label}_noop" in out and "storm_noop_idle" in out:
            out[f"storm_{label}_noop_ratio"] = out[f"storm_{label}_noop"] / out["storm_noop_idle"]
    return out


@dataclass(frozen=True)
class Figure:
    name: str  # for --only and the progress lines
    run: Callable[[Server, dict], dict]
    roles: tuple[str, str]  # the two servers it compares, A/B
    fresh: bool = False  # its servers are started anew for it in every round, and stopped after
    samples: int = 1  # A/B pairs per round, in alternating order: noisy figures need more


FIGURES = [
    Figure("stor", fig_stor, ("plain", "xx")),
    Figure("retr", fig_retr, ("plain", "xx"), samples=3),
    Figure("small", fig_small, ("plain", "xx")),
    Figure("list", fig_list, ("plain", "xx")),
    Figure("deep", fig_deep, ("plain", "xx")),
    Figure("logins", fig_logins, ("plain", "xx")),
    Figure("held", fig_held, ("plain_fresh", "xx_fresh"), fresh=True, samples=3),
    Figure("tls", fig_tls, ("plain_tls", "xx_tls"), samples=3),
    Figure("conc", fig_conc, ("plain", "xx")),
    Figure("load", fig_load, ("plain", "xx")),
    Figure("workers", fig_workers, ("xx", "xx_w2")),
    Figure("biglist", fig_biglist, ("plain_fresh", "xx_fresh"), fresh=True),
    Figure("storm", fig_storm, ("plain", "xx")),
    Figure("metrics", fig_metrics, ("xx", "xx_metrics"), samples=2),
]


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str
    fmt: str
    ratio: str = "x/p"  # "x/p": xxftpd / pyftpdlib; "of:KEY": xxftpd / xxftpd's KEY; "": none


def rows_for(sz: Sizes) -> list[Row]:
    n = f"{sz.quota_files:,}"
    lo, hi = sz.held
    c, cm = sz.conc_streams, sz.conc_mib
    return [
        Row("stor", f"1. STOR {sz.big_mib} MiB, single stream (xxftpd: home with quota)", "MiB/s", ".0f"),
        Row("retr", f"2a. RETR {sz.big_mib} MiB, single stream", "MiB/s", ".0f"),
        Row("retr_m1", f"2b. RETR {sz.big_mib} MiB through mount /m1 (pyftpdlib: real folder)", "MiB/s", ".0f"),
        Row("small_empty", "3a. 1 KiB STOR, empty quota tree (pyftpdlib: empty folder)", "ms", ".2f"),
        Row("small_big", f"3b. 1 KiB STOR, quota tree of {n} files (ratio: 3b/3a)", "ms", ".2f", "of:small_empty"),
        Row("scan_big", f"3c. initial scan: first 1 KiB STOR into the {n}-file tree", "ms", ".0f", ""),
        Row("list", f"4a. LIST of {sz.list_files:,} files", "ms", ".1f"),
        Row("mlsd", f"4b. MLSD of {sz.list_files:,} files", "ms", ".1f"),
        Row("cwd", "5a. CWD 10 folders deep (xxftpd: 3 nested mounts)", "µs", ".0f"),
        Row("size", "5b. SIZE 10 folders deep", "µs", ".0f"),
        Row("mdtm", "5c. MDTM 10 folders deep", "µs", ".0f"),
        Row("logins", f"6a. {sz.logins} concurrent connect+login+QUIT (bursts of {sz.burst})", "s", ".3f"),
        Row(f"held_{lo}", f"6b. {lo} connect+login, all kept connected (bursts of {sz.burst})", "s", ".3f"),
        Row(f"held_{hi}", f"6c. {hi:,} connect+login, all kept connected (bursts of {sz.burst})", "s", ".3f"),
        Row("pss_idle", "6d. server memory (PSS), fresh server, no client", "MiB", ".1f"),
        Row(f"pss_{lo}", f"6e. server memory (PSS), {lo} clients logged in", "MiB", ".1f"),
        Row(f"pss_{hi}", f"6f. server memory (PSS), {hi:,} clients logged in", "MiB", ".1f"),
        Row("pss_per_conn", f"6g. memory per logged-in client: (6f - 6d) / {hi:,}", "KiB", ".1f"),
        Row("pss_end", "6h. server memory (PSS) of the main instance at the end of the run, no client",
            "MiB", ".1f"),
        Row("tls_stor", f"7a. FTPS STOR {sz.big_mib} MiB, single stream (AUTH TLS, PROT P)", "MiB/s", ".0f"),
        Row("tls_retr", f"7b. FTPS RETR {sz.big_mib} MiB, single stream (AUTH TLS, PROT P)", "MiB/s", ".0f"),
        Row("conc_retr", f"8a. {c} concurrent RETR of {cm} MiB files, whole batch", "s", ".2f"),
        Row("conc_stor", f"8b. {c} concurrent STOR of {cm} MiB files, whole batch (xxftpd: home with quota)",
            "s", ".2f"),
        Row("load_alone", f"9a. RETR {sz.big_mib} MiB, nothing else running", "MiB/s", ".0f"),
        Row("load_retr", f"9b. RETR {sz.big_mib} MiB while {sz.load_logins} clients log in "
            "(xxftpd: scrypt hash; pyftpdlib: DummyAuthorizer)", "MiB/s", ".0f"),
        Row("load_ratio", "9c. 9b/9a (xxftpd target: 0.8 or more)", "", ".2f", ""),
        Row("load_logins", f"9d. time of the {sz.load_logins} logins during 9b (bursts of {sz.burst})", "s",
            ".2f", ""),
        Row("load_side", f"9e. RETR {sz.big_mib} MiB while the same {sz.load_logins} scrypt logins go to a second "
            "xxftpd process (what the machine leaves)", "MiB/s", ".0f", ""),
        Row("load_side_ratio", "9f. 9e/9a", "", ".2f", ""),
        Row("w1_retr", f"10a. {c} concurrent RETR of {cm} MiB, aggregate, xxftpd --workers 1", "MiB/s", ".0f", ""),
        Row("w2_retr", f"10b. {c} concurrent RETR of {cm} MiB, aggregate, xxftpd --workers 2 (ratio: 10b/10a)",
            "MiB/s", ".0f", "of:w1_retr"),
        Row("w1_stor", f"10c. {c} concurrent STOR of {cm} MiB, aggregate, xxftpd --workers 1", "MiB/s", ".0f", ""),
        Row("w2_stor", f"10d. {c} concurrent STOR of {cm} MiB, aggregate, xxftpd --workers 2 (ratio: 10d/10c)",
            "MiB/s", ".0f", "of:w1_stor"),
        Row("storm_alone", f"12a. RETR {sz.big_mib} MiB alone, right after each storm, over about its length "
            "(each the reference of its storm: 12e, 12k)", "MiB/s", ".0f"),
        Row("storm_noop_idle", "12b. NOOP round trip, median, nothing else running", "ms", ".2f"),
        Row("storm_noop_retr", "12c. NOOP round trip, median, during 12a", "ms", ".2f"),
        Row("storm_unknown_retr", f"12d. RETR {sz.big_mib} MiB while {sz.storm} clients connect and send USER/PASS "
            "of unknown users, as fast as they are greeted", "MiB/s", ".0f"),
        Row("storm_unknown_ratio", "12e. 12d / RETR alone after it (target: 0.8 or more)", "", ".2f", ""),
        Row("storm_unknown_noop", "12f. NOOP round trip, median, during 12d", "ms", ".2f"),
        Row("storm_unknown_noop_ratio", "12g. 12f/12b (target: 2 or less)", "", ".2f", ""),
        Row("storm_unknown_secs", f"12h. time until all {sz.storm} logins of 12d were answered", "s", ".1f", ""),
        Row("storm_unknown_421", "12i. of them answered 421 (xxftpd: beyond --max-login-checks, default 16 per CPU)", "",
            ".0f", ""),
        Row("storm_scrypt_retr", f"12j. RETR {sz.big_mib} MiB while {sz.storm} clients send USER bob (scrypt hash) "
            "and a wrong PASS, as fast as they are greeted", "MiB/s", ".0f", ""),
        Row("storm_scrypt_ratio", "12k. 12j / RETR alone after it (target: 0.8 or more)", "", ".2f", ""),
        Row("storm_scrypt_noop", "12l. NOOP round trip, median, during 12j", "ms", ".2f", ""),
        Row("storm_scrypt_noop_ratio", "12m. 12l/12b (target: 2 or less)", "", ".2f", ""),
        Row("storm_scrypt_secs", f"12n. time until all {sz.storm} logins of 12j were answered", "s", ".1f", ""),
        Row("storm_scrypt_421", "12o. of them answered 421", "", ".0f", ""),
        Row("m0_stor", f"13a. STOR {sz.big_mib} MiB, xxftpd --metrics off", "MiB/s", ".0f", ""),
        Row("m1_stor", f"13b. STOR {sz.big_mib} MiB, --metrics on, scraped every second (13b/13a; target 0.97 "
            "or more)", "MiB/s", ".0f", "of:m0_stor"),
        Row("m0_retr", f"13c. RETR {sz.big_mib} MiB, xxftpd --metrics off", "MiB/s", ".0f", ""),
        Row("m1_retr", f"13d. RETR {sz.big_mib} MiB, --metrics on, scraped every second (13d/13c; target 0.97 "
            "or more)", "MiB/s", ".0f", "of:m0_retr"),
        Row("m0_logins", f"13e. {sz.logins} concurrent connect+login+QUIT, xxftpd --metrics off", "s", ".3f", ""),
        Row("m1_logins", f"13f. the same, --metrics on, scraped every second (13f/13e: time, lower is better; "
            "target 1.03 or less)", "s", ".3f", "of:m0_logins"),
        Row("m0_stor_cpu", "13g. server CPU per STOR of 13a", "ms", ".0f", ""),
        Row("m1_stor_cpu", "13h. server CPU per STOR of 13b (13h/13g)", "ms", ".0f", "of:m0_stor_cpu"),
        Row("m0_retr_cpu", "13i. server CPU per RETR of 13c", "ms", ".0f", ""),
        Row("m1_retr_cpu", "13j. server CPU per RETR of 13d (13j/13i)", "ms", ".0f", "of:m0_retr_cpu"),
        Row("m0_logins_cpu", "13k. server CPU for the logins of 13e", "ms", ".0f", ""),
        Row("m1_logins_cpu", "13l. server CPU for the logins of 13f (13l/13k)", "ms", ".0f", "of:m0_logins_cpu"),
    ] + big_list_rows(sz)


BIG_LIST_METRICS = (  # key suffix, what, unit, format
    ("", "time", "ms", ".0f"),
    ("_mem", "server peak memory growth", "MiB", ".1f"),
    ("_noop_med", "another session's NOOP, median", "ms", ".2f"),
    ("_noop_max", "another session's NOOP, worst", "ms", ".1f"),
    ("_noop_work", "another session's NOOP, most server work waited for", "ms", ".1f"),
)


def big_list_rows(sz: Sizes) -> list[Row]:
    """Figure 11: 11a, 11b, ... for each folder size and command, a row per metric."""
    rows = []
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    for n in sz.big_lists:
        for cmd in ("LIST", "NLST", "MLSD"):
            letter = next(letters)
            for suffix, what, unit, fmt in BIG_LIST_METRICS:
                title = f"11{letter}. {cmd} of {n:,} files: {what}"
                rows.append(Row(f"bl_{cmd.lower()}_{n}{suffix}", title, unit, fmt))
    rows.append(Row("bl_noop_quiet", f"11{next(letters)}. another session's NOOP, median, no listing running",
                    "ms", ".2f"))
    return rows


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


MAIN_COLUMNS = ("pyftpdlib", "xxftpd")


def _ratio(results: dict, row: Row) -> tuple[float | None, str]:
    """(the ratio of a row, what it is a ratio of)."""
    def med(column: str, key: str) -> float | None:
        samples = results[column].get(key)
        return median(samples) if samples else None

    x = med("xxftpd", row.key)
    if x is None:
        return None, ""
    if row.ratio == "x/p":
        p = med("pyftpdlib", row.key)
        return (x / p, "xxftpd/pyftpdlib") if p else (None, "")
    if row.ratio.startswith("of:"):
        other = row.ratio[3:]
        base = med("xxftpd", other)
        return (x / base, f"xxftpd {row.key}/xxftpd {other}") if base else (None, "")
    return None, ""


def _cell(samples: list[float] | None, row: Row) -> str:
    if not samples:
        return "–"
    return f"{median(samples):{row.fmt}} {row.unit}".rstrip()


def table(results: dict, rows: list[Row]) -> str:
    """Markdown: figure, pyftpdlib, xxftpd, ratio; rows that no server
    measured (--only) are left out."""
    out = ["| figure | pyftpdlib | xxftpd | ratio |", "|---|---:|---:|---:|"]
    for row in rows:
        if not any(results[c].get(row.key) for c in MAIN_COLUMNS):
            continue
        ratio, _ = _ratio(results, row)
        p, x = (_cell(results[c].get(row.key), row) for c in MAIN_COLUMNS)
        out.append(f"| {row.title} | {p} | {x} | {f'{ratio:.2f}' if ratio is not None else '–'} |")
    return "\n".join(out)


def summary(results: dict, rows: list[Row]) -> list[dict]:
    figures = []
    for row in rows:
        if not any(results[c].get(row.key) for c in MAIN_COLUMNS):
            continue
        entry = {"key": row.key, "figure": row.title, "unit": row.unit}
        for side in MAIN_COLUMNS:
            samples = results.get(side, {}).get(row.key)
            entry[side] = median(samples) if samples else None
            entry[f"{side}_samples"] = samples or []
        ratio, of = _ratio(results, row)
        if ratio is not None:
            entry["ratio"] = ratio
            entry["ratio_of"] = of
        figures.append(entry)
    return figures


# --------------------------------------------------------------------------
# main


def cpu_seconds() -> tuple[float, float, float]:
    """(user+system seconds of every CPU of the machine, from /proc/stat;
    user+system seconds of this process and its reaped children; seconds
    the hypervisor ran something else while this VM's CPUs wanted to run,
    "steal")."""
    machine = steal = float("nan")
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        # user nice system idle iowait irq softirq steal ...: user + nice + system
        tick = os.sysconf("SC_CLK_TCK")
        machine = (int(fields[1]) + int(fields[2]) + int(fields[3])) / tick
        steal = int(fields[8]) / tick
    except (OSError, IndexError, ValueError):
        pass
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return machine, own, steal


def raise_nofile(need: int) -> int:
    """Raise the soft limit on open files to ``need`` (up to the hard limit);
    the servers, started later, inherit it. Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def make_servers(base: Path, data: dict, roles: set[str]) -> dict[str, Server]:
    """The server instances the chosen figures need, by role (not started)."""
    # every client comes from 127.0.0.1, in bursts: no per-address or not-logged-in limits (as plain pyftpdlib)
    xx = [sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(data["xroot"]), "--host", HOST,
          "--max-cons", "2000", "--max-cons-per-ip", "0", "--max-unauthenticated", "0",
          "--max-unauthenticated-per-ip", "0"]
    plain = [sys.executable, str(HERE / "plain_server.py"), "--home", str(data["phome"]), "--host", HOST,
             "--max-cons", "2000"]
    tls = []
    if data["tls"] is not None:
        tls = ["--tls", "--certfile", str(data["tls"] / "cert.pem"), "--keyfile", str(data["tls"] / "key.pem")]
    specs = {
        "plain": ("pyftpdlib", plain, "pyftpdlib"),
        "xx": ("xxftpd", xx + ["--workers", "1"], "xxftpd"),
        "plain_fresh": ("pyftpdlib-fresh", plain, "pyftpdlib"),
        "xx_fresh": ("xxftpd-fresh", xx, "xxftpd"),
        "plain_tls": ("pyftpdlib-tls", plain + tls, "pyftpdlib"),
        "xx_tls": ("xxftpd-tls", xx + tls, "xxftpd"),
        "xx_w2": ("xxftpd-w2", xx + ["--workers", "2"], "xxftpd"),
        "xx_metrics": ("xxftpd-metrics", xx + ["--workers", "1", "--metrics", f"{HOST}:{free_port()}"], "xxftpd"),
        "xx_side": ("xxftpd-side", xx, "xxftpd"),
    }
    return {role: Server(label, argv, base / f"{label}.log", role=role, column=column)
            for role, (label, argv, column) in specs.items() if role in roles}


def main(argv: list[str] | None = None) -> int:
    names = [f.name for f in FIGURES]
    p = argparse.ArgumentParser(description="xxftpd vs plain pyftpdlib, side by side.")
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="rounds per figure (default 3); medians are reported")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--only", metavar="NAME[,NAME]",
                   help=f"run only these figures, comma separated: {', '.join(names)}")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--tmpdir", metavar="DIR", help="where to build the data (default: the system temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the data folder and server logs at the end")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    figures = FIGURES
    if args.only is not None:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in names]
        if unknown or not wanted:
            what = f"unknown figure {', '.join(unknown)}" if unknown else "no figure given"
            p.error(f"--only: {what}; choose from {', '.join(names)}")
        figures = [f for f in FIGURES if f.name in wanted]
    need = {f.name for f in figures}
    sz = QUICK if args.quick else FULL
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds()
    if "storm" in need:
        raise_nofile(2 * sz.storm + 512)
    if "held" in need:
        limit = raise_nofile(2 * max(sz.held) + 512)
        if limit < max(sz.held) + 256:
            p.error(f"the open-file limit is {limit}; figure 'held' needs about {max(sz.held) + 256} "
                    "(raise the hard limit, ulimit -Hn)")

    base_dir = Path(args.tmpdir or tempfile.gettempdir())
    if not base_dir.is_dir():
        p.error(f"--tmpdir {base_dir} is not a folder")
    check_space(base_dir, sz)
    base = Path(tempfile.mkdtemp(prefix="xxftpd-bench-", dir=base_dir))
    servers: dict[str, Server] = {}
    pool = ThreadPoolExecutor(max_workers=sz.burst, thread_name_prefix="client")
    results: dict[str, dict[str, list[float]]] = {column: {} for column in MAIN_COLUMNS}
    try:
        log(f"building data in {base} ({'quick' if args.quick else 'full'} sizes; "
            f"figures: {', '.join(f.name for f in figures)}) ...")
        data = build_data(base, sz, need)
        roles = {role for f in figures for role in f.roles} | ({"xx_side"} if "load" in need else set())
        servers = make_servers(base, data, roles)
        fresh = {role for f in figures if f.fresh for role in f.roles}
        for role, srv in servers.items():
            if role not in fresh:
                srv.start()
                log(f"{srv.label} listening on {HOST}:{srv.port} (pid {srv.pid})")
        # the client's login threads, made once (not part of any figure's time)
        warm = threading.Barrier(sz.burst)
        for future in [pool.submit(warm.wait) for _ in range(sz.burst)]:
            future.result()
        ctx = {
            "sizes": sz, "plain": servers.get("plain"), "xx": servers.get("xx"), "side": servers.get("xx_side"),
            "chunk": memoryview(data["chunk"]),
            "recv_buf": bytearray(RECV_BUF), "list_buf": bytearray(4 * MiB),
            "qbig": data["qbig"], "qempty": data["qempty"], "pool": pool, "tls_info": {},
        }
        for rnd in range(args.repeat):
            ctx["round"] = rnd
            for fig in figures:
                pair = [servers[role] for role in fig.roles]
                order = [srv for k in range(fig.samples)
                         for srv in (pair if (rnd * fig.samples + k) % 2 == 0 else pair[::-1])]
                for srv in order:
                    if fig.fresh:
                        srv.start()
                    os.sync()  # the last figure's writeback must not run into this one
                    t0 = time.monotonic()
                    try:
                        values = fig.run(srv, ctx)
                    except (RuntimeError, EOFError, OSError, ftplib.Error) as err:
                        raise ServerError(f"figure {fig.name!r} failed on {srv.label}: {err!r}\n"
                                          f"  server log:\n{srv._log_tail()}") from err
                    srv.check_alive()
                    if fig.fresh:
                        srv.stop()
                    for key, value in values.items():
                        results[srv.column].setdefault(key, []).append(value)
                    log(f"round {rnd + 1}/{args.repeat} {fig.name:7s} {srv.label:15s} "
                        f"{time.monotonic() - t0:6.2f} s  "
                        + "  ".join(f"{k}={v:.4g}" for k, v in values.items()))
        for role in ("plain", "xx"):  # what the main instances hold after every figure
            if role in servers and servers[role].pid:
                results[servers[role].column]["pss_end"] = [pss_mib(servers[role].pid)]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        t0 = time.monotonic()
        for srv in servers.values():
            srv.stop()
        if args.keep:
            log(f"data and server logs kept in {base}")
        else:
            log(f"servers stopped in {time.monotonic() - t0:.1f} s; removing {base} ...")
            shutil.rmtree(base, ignore_errors=True)
            log(f"... done in {time.monotonic() - t0:.1f} s")
    elapsed = time.monotonic() - started
    cpu_after = cpu_seconds()  # every server has been waited for: its CPU time is in RUSAGE_CHILDREN
    other = max(0.0, (cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1]))
    steal = cpu_after[2] - cpu_before[2]
    rows = rows_for(sz)
    info = machine_info()
    info["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    info["other_cpu_s"] = round(other, 1) if other == other else None  # nan: no /proc/stat
    info["steal_cpu_s"] = round(steal, 1) if steal == steal else None
    print()
    print(table(results, rows))
    print()
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, "
          f"pyftpdlib {info['pyftpdlib']}, xxftpd {info['xxftpd']}; "
          f"{'quick' if args.quick else 'full'} sizes, median of {args.repeat} round(s); "
          f"ratio = xxftpd/pyftpdlib unless the row says otherwise; load average {load_before:.2f} at start, "
          f"{info['loadavg_1min'][1]:.2f} at end; run took {elapsed:.0f} s"
          + (f"; other processes used about {other:.0f} CPU-seconds meanwhile "
             f"({other / elapsed:.2f} of a CPU on average)" if other == other else "")
          + (f"; the hypervisor took {steal:.0f} CPU-seconds from this VM (steal)" if steal == steal else ""))
    if args.json:
        doc = {"machine": info, "sizes": asdict(sz), "quick": args.quick, "repeat": args.repeat,
               "figures_run": [f.name for f in figures], "tls_data": ctx["tls_info"],
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
