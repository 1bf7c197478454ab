"""Shared fixtures: a tree builder, a real server on a free loopback port,
and ftplib clients logged into it."""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xxftp_pyftpdlib.server import Options, make_handler, make_server

HOST = "127.0.0.1"


class Tree:
    """Builds an xxftp server root under a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def user(self, name: str, password: str | None = None, permission: str | None = None,
             virtual: str | None = None, size: str | None = None) -> Path:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        if password is not None:
            self.xxftp(home, "password", hashlib.md5(password.encode()).hexdigest() + "\n")
        if permission is not None:
            self.xxftp(home, "permission", permission + "\n")
        if virtual is not None:
            self.xxftp(home, "virtual", virtual)
        if size is not None:
            self.xxftp(home, "size", size + "\n")
        return home

    def xxftp(self, folder: Path, name: str, text: str) -> Path:
        (folder / ".xxftp").mkdir(parents=True, exist_ok=True)
        (folder / ".xxftp").chmod(0o755)  # writable by the server's user only, or it is not trusted
        path = folder / ".xxftp" / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    def file(self, relpath: str, data: bytes | str = b"data") -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def folder(self, relpath: str) -> Path:
        path = self.root / relpath
        path.mkdir(parents=True, exist_ok=True)
        return path


class ServerThread(threading.Thread):
    """Runs a pyftpdlib server's IO loop in a thread until stopped."""

    def __init__(self, server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self._stop_event = threading.Event()

    def run(self) -> None:
        # The IO loop itself: serve_forever(blocking=False) would log a
        # "starting" line (and query the socket) on every pass.
        while not self._stop_event.is_set():
            self.server.ioloop.loop(timeout=0.01, blocking=False)
        self.server.close_all()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    @property
    def port(self) -> int:
        return self.server.address[1]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "root")


@pytest.fixture
def drop_box(tree):
    """anonymous: a read-only home with a write-only /upload of 5 MiB."""
    tree.user("anonymous", permission="read", virtual="upload $root/public-upload write\n")
    folder = tree.folder("public-upload")
    tree.xxftp(folder, "size", "5M\n")
    return folder


@pytest.fixture
def start_server():
    """start_server(root, concurrency="async", **handler_attrs) -> ServerThread"""
    started: list[ServerThread] = []

    def start(root, concurrency: str = "async", handler_base=None, **attrs) -> ServerThread:
        # every client of these tests is 127.0.0.1, many at once: the limits per address and on
        # connections not logged in yet, and the time to log in, are off here (test_admission.py
        # tests them on the real command)
        options = Options(root=str(root), host=HOST, port=0, concurrency=concurrency, max_cons_per_ip=0,
                          max_unauthenticated=attrs.pop("max_unauthenticated", 0), max_unauthenticated_per_ip=0,
                          login_timeout=attrs.pop("login_timeout", 0))
        kwargs = {"base": handler_base} if handler_base else {}
        handler = make_handler(options, **kwargs)
        handler.auth_failed_timeout = attrs.pop("auth_failed_timeout", 0.01)
        for key, value in attrs.items():
            setattr(handler, key, value)
        return _serve_in_thread(options, handler, started)

    yield start
    for thread in started:
        thread.stop()


def _serve_in_thread(options: Options, handler: type, started: list[ServerThread]) -> ServerThread:
    """The server ``make_server`` builds, run in a thread (listed in ``started`` for the stop)."""
    thread = ServerThread(make_server(options, handler))
    thread.start()
    started.append(thread)
    return thread


@pytest.fixture
def connect():
    """connect(port, user=None, password="") -> ftplib.FTP, logged in if user given."""
    clients: list[ftplib.FTP] = []

    def open_client(port: int, user: str | None = None, password: str = "", timeout: float = 10) -> ftplib.FTP:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=timeout)
        clients.append(ftp)
        if user is not None:
            ftp.login(user, password)
        return ftp

    yield open_client
    for ftp in clients:
        try:
            ftp.close()
        except OSError:
            pass


def upload(ftp: ftplib.FTP, path: str, data: bytes, cmd: str = "STOR") -> str:
    return ftp.storbinary(f"{cmd} {path}", io.BytesIO(data))


def store(ftp: ftplib.FTP, path: str, data: bytes, cmd: str = "STOR", rest: int | None = None) -> str:
    """Upload and return the final reply, success or refusal.

    A server that refuses an upload mid-transfer closes the data connection
    while the client may still be sending; the client then sees a reset,
    as with any FTP server. This reads the reply anyway. ``rest``: send
    ``REST rest`` first (a resumed STOR).
    """
    ftp.voidcmd("TYPE I")
    try:
        conn = ftp.transfercmd(f"{cmd} {path}", rest)
    except ftplib.Error as err:
        return str(err)
    try:
        conn.sendall(data)
        if hasattr(conn, "unwrap"):
            conn.unwrap()
    except OSError:
        pass
    finally:
        conn.close()
    try:
        return ftp.voidresp()
    except ftplib.Error as err:
        return str(err)


class UploadInProgress:
    """An upload held open on its data connection while other sessions act.

    ``UploadInProgress(ftp, "APPE x")`` sends the command (a refusal such
    as ``450`` raises ``ftplib.Error``); ``send`` writes a part; ``finish``
    sends the rest, closes the data connection (the end of the upload) and
    returns the final reply, success or refusal; ``abort`` resets the data
    connection (a broken upload) and returns the reply.
    """

    def __init__(self, ftp: ftplib.FTP, cmd: str, rest: int | None = None) -> None:
        ftp.voidcmd("TYPE I")
        self.ftp = ftp
        self.conn = ftp.transfercmd(cmd, rest)
        self.sent = 0

    def send(self, data: bytes) -> bool:
        """Send a part; False if the server already stopped the upload."""
        try:
            self.conn.sendall(data)
        except OSError:
            return False
        self.sent += len(data)
        return True

    def replied(self) -> bool:
        """True once the server answered on the control connection (it ended the upload early)."""
        return bool(select.select([self.ftp.sock], [], [], 0)[0])

    def finish(self, data: bytes = b"") -> str:
        if data:
            self.send(data)
        self.conn.close()
        return self._reply()

    def abort(self) -> str:
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()
        return self._reply()

    def _reply(self) -> str:
        try:
            return self.ftp.voidresp()
        except ftplib.Error as err:
            return str(err)


def upload_or_refusal(ftp: ftplib.FTP, cmd: str, data: bytes = b"x", rest: int | None = None) -> str:
    """The reply that refused an upload command at once (before any 150),
    or ``"started, then <final reply>"`` if the upload ran."""
    try:
        upload = UploadInProgress(ftp, cmd, rest)
    except ftplib.Error as err:
        return str(err)
    return "started, then " + upload.finish(data)


def tree_usage(tree_root, root) -> int:
    """The usage of a quota tree as a fresh scan of the disk counts it."""
    from xxftp_pyftpdlib.config import ConfigStore
    from xxftp_pyftpdlib.ledger.scan import scan
    return scan(str(tree_root), ConfigStore(str(root)))


def size(path) -> int:
    """A file's size, or -1 if it is not there."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def stop_process(proc: subprocess.Popen) -> str:
    """SIGTERM a server process and wait for it; its stderr. It must exit 0."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return err


def ledger_used(tree_root) -> int | None:
    """The committed usage in a quota tree's ledger."""
    with open(os.path.join(tree_root, ".xxftp", "ledger")) as f:
        return json.load(f)["used"]


def download(ftp: ftplib.FTP, path: str) -> bytes:
    out = io.BytesIO()
    ftp.retrbinary(f"RETR {path}", out.write)
    return out.getvalue()


def listing(ftp: ftplib.FTP, cmd: str = "LIST", path: str = "") -> list[str]:
    lines: list[str] = []
    ftp.retrlines(f"{cmd} {path}".strip(), lines.append)
    return lines


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class ResumingFTP_TLS(ftplib.FTP_TLS):
    """ftplib's FTPS client resuming the control connection's TLS session on
    each data connection, as the server requires by default (ftplib makes
    a fresh session each time, which the server refuses with 522)."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


class ImplicitFTP_TLS(ResumingFTP_TLS):
    """ftplib speaking implicit FTPS: the control socket is wrapped before
    the greeting is read, and data is protected from the start."""

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        if host:
            self.host = host
        if port:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        self.sock = socket.create_connection((self.host, self.port), self.timeout)
        self.af = self.sock.family
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        self._prot_p = True  # implied on an implicit port
        return self.welcome


@pytest.fixture
def start_options():
    """start_options(Options) -> ServerThread: the server ``make_server``
    builds from exactly these options (TLS modes, ports, limits)."""
    started: list[ServerThread] = []

    def start(options: Options) -> ServerThread:
        handler = make_handler(options)
        handler.auth_failed_timeout = 0.01
        return _serve_in_thread(options, handler, started)

    yield start
    for thread in started:
        thread.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def temporaries(root) -> list[str]:
    """Upload temporaries (``.xxftpd-*``) anywhere under ``root``."""
    return [os.path.join(d, n) for d, _, files in os.walk(root) for n in files if n.startswith(".xxftpd-")]


def open_file_bytes(pid: int, under) -> int:
    """Bytes in the regular files process ``pid`` holds open under the folder
    ``under``, unnamed upload temporaries included (what a server has
    received of its running uploads, whatever names they have yet)."""
    prefix = os.path.realpath(under) + "/"
    total = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        link = f"/proc/{pid}/fd/{fd}"
        try:
            if os.readlink(link).startswith(prefix):
                st = os.stat(link)
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
        except OSError:
            continue
    return total


def run_xxftpd(*args: str, wait_for_port: int | None = None, **popen) -> subprocess.Popen:
    """Start the real ``xxftpd`` command; optionally wait until it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "xxftp_pyftpdlib", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )
    if wait_for_port is not None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"xxftpd exited early: {proc.stderr.read()}")
            try:
                socket.create_connection((HOST, wait_for_port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            proc.kill()
            raise RuntimeError("xxftpd did not start listening")
    return proc


def start_logged(root, *args: str, host: str = HOST, **popen) -> tuple[subprocess.Popen, int]:
    """The real ``xxftpd`` serving ``root`` on a free port, its log in a file
    beside the root (a full stderr pipe would stall it): (process, port)."""
    port = free_port()
    log = os.path.join(os.path.dirname(root), f"xxftpd-{port}.log")
    proc = run_xxftpd("--root", str(root), "--host", host, "--port", str(port), "--log-file", log, *args,
                      wait_for_port=port, **popen)
    proc.log = log
    return proc, port


def stop_logged(proc: subprocess.Popen) -> str:
    """SIGTERM a server of ``start_logged`` and wait: it must exit 0 with no
    traceback in its log, which is returned."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with open(proc.log, errors="replace") as f:
        text = f.read()
    assert proc.returncode == 0, (err or "") + text[-3000:]
    assert "Traceback" not in text and "unhandled exception" not in text, text[-3000:]
    return text


def free_port_on(host: str) -> int:
    """A free TCP port on ``host`` (an IPv4 or IPv6 loopback address)."""
    if host == HOST:
        return free_port()
    with socket.socket(socket.AF_INET6) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hashes(folder: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every regular file under ``folder``."""
    return {str(p.relative_to(folder)): sha(p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


# Programs the real-client tests start -> the Debian package that has them
# (tests/debian-packages.txt lists the packages).
PACKAGES = {"lftp": "lftp", "curl": "curl", "wget": "wget", "rclone": "rclone",
            "ncftpput": "ncftp", "ncftpget": "ncftp", "ncftpls": "ncftp"}


def require_programs(*programs: str) -> None:
    """Fail, naming the package, if a client program is missing: a test
    that skipped instead would pass on a machine that tests nothing."""
    for program in programs:
        package = PACKAGES.get(program, program)
        assert shutil.which(program), (f"{program} is needed for these tests: install the Debian package "
                                       f"'{package}' (sh tests/debian-packages.sh installs them all)")


class XxftpdProcess:
    """One real ``xxftpd`` process on one loopback address, with a debug log
    to read; ``extra`` are more command-line flags (``--tls ...``)."""

    def __init__(self, root: Path, host: str, log: Path, *extra: str) -> None:
        self.host, self.log = host, log
        self.port = free_port_on(host)
        self.proc = run_xxftpd("--root", str(root), "--host", host, "--port", str(self.port),
                               "--log-file", str(log), "--log-level", "debug", *extra)
        self._wait_listening(host)
        self._mark = 0

    def _wait_listening(self, *hosts: str) -> None:
        """Until the server takes connections on each of ``hosts`` (15 s at most)."""
        deadline = time.monotonic() + 15
        for host in hosts:
            while True:
                assert self.proc.poll() is None, f"xxftpd exited: {self.proc.communicate()[1]}"
                try:
                    socket.create_connection((host, self.port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"xxftpd does not listen on {host}"
                    time.sleep(0.05)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ftp://{host}:{self.port}"

    def mark(self) -> None:
        self._mark = self.log.stat().st_size

    def since_mark(self) -> str:
        """The log written since ``mark()`` (never a traceback)."""
        with open(self.log, "rb") as f:
            f.seek(self._mark)
            text = f.read().decode(errors="replace")
        assert "Traceback" not in text, text[-4000:]
        return text

    def commands(self) -> list[str]:
        """Command names the server received since ``mark()``."""
        return [line.split("] <- ", 1)[1].split(" ")[0] for line in self.since_mark().splitlines() if "] <- " in line]

    def ftplib(self, user: str = "alice", password: str = "pw") -> ftplib.FTP:
        ftp = ftplib.FTP()
        ftp.af = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        ftp.connect(self.host, self.port, timeout=15)
        ftp.login(user, password)
        return ftp

    def stop(self) -> None:
        stop_process(self.proc)
        assert "Traceback" not in self.log.read_text(errors="replace")
