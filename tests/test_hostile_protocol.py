"""Hostile control-connection input on raw sockets, against the real
``xxftpd`` process.

Every line gets a proper reply (a 3-digit code, well framed) or, for QUIT,
a clean close; never a traceback and never a dropped connection. While the
hostile clients run, a second client (bob) keeps doing NOOP, LIST and RETR
and must see no error and no stall; after each test the process is alive
and serving, its log holds no traceback, and nothing outside alice's home
(and the read-write mount she may change) has changed.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import HOST, free_port, run_xxftpd, stop_process, temporaries, wait_until
from xxftp_pyftpdlib import XxftpHandler

KiB = 1024
MiB = 1024 * KiB
HICCUP = 2.0  # seconds: the longest NOOP+LIST+RETR round the second client may see
FIRST_LINE = re.compile(rb"^[1-5][0-5][0-9][ -]")


# --- a raw control connection


@dataclass
class Reply:
    code: int
    lines: list[bytes]

    @property
    def text(self) -> bytes:
        return b"\n".join(self.lines)

    def __repr__(self) -> str:
        return f"Reply({self.text[:300]!r})"


class ProtocolViolation(AssertionError):
    pass


class Raw:
    """A control connection read exactly as the server frames it."""

    def __init__(self, port: int, host: str = HOST, timeout: float = 15) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.greeting = self.reply()

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset = True
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes | None:
        """One CRLF-terminated line without its CRLF; None at end of stream."""
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            if self.eof or not self._fill():
                if self.buf:
                    raise ProtocolViolation(f"unterminated reply line {bytes(self.buf[:200])!r}")
                return None

    def reply(self) -> Reply | None:
        """One reply (RFC 959 multi-line rules); None if the server closed."""
        first = self.line()
        if first is None:
            return None
        if not FIRST_LINE.match(first):
            raise ProtocolViolation(f"not a reply line: {first[:200]!r}")
        lines = [first]
        if first[3:4] == b"-":
            while True:
                line = self.line()
                if line is None:
                    raise ProtocolViolation(f"multi-line reply cut short: {lines!r}")
                lines.append(line)
                if line[:3] == first[:3] and line[3:4] == b" ":
                    break
        return Reply(int(first[:3]), lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: bytes | str) -> Reply | None:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def ok(self, line: bytes | str, *codes: int) -> Reply:
        reply = self.cmd(line)
        assert reply is not None and (reply.code in codes if codes else reply.code < 400), (line, reply)
        return reply

    def login(self, user: str, password: str | None = None) -> None:
        reply = self.ok(f"USER {user}", 230, 331)
        if reply.code == 331:
            self.ok(f"PASS {password}", 230)

    def pasv(self) -> socket.socket:
        reply = self.ok("PASV", 227)
        numbers = [int(n) for n in re.search(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", reply.text).groups()]
        return socket.create_connection((".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]), timeout=15)

    def at_eof(self) -> bool:
        """True if the server closed the connection (after any pending replies)."""
        while not self.eof:
            self._fill()
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def well_framed(reply: Reply) -> bool:
    """No bare CR, bare LF or NUL inside a reply line (they split or forge replies)."""
    return not any(c in line for line in reply.lines for c in (b"\r", b"\n", b"\x00"))


# --- the served tree, the second client and the checks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(base: Path, skip: list[Path]) -> dict[str, tuple]:
    """Every path under ``base`` (but under ``skip``) with type, mode, size and content hash."""
    found: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(base):
        here = Path(folder)
        st = os.lstat(here)
        found[str(here)] = ("dir", st.st_mode, sorted(dirs + files) if here not in skip else None)
        if here in skip:
            dirs[:] = []
            continue
        for name in files:
            path = here / name
            if path in skip:
                continue
            st = os.lstat(path)
            digest = sha(path.read_bytes()) if path.is_file() and not path.is_symlink() else os.readlink(path)
            found[str(path)] = ("file", st.st_mode, st.st_size, digest)
    return found



class Watcher(threading.Thread):
    """The second client: NOOP, LIST and RETR in a loop, timing each round."""

    def __init__(self, port: int, expected: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.expected = expected
        self.rounds: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        ftp = None
        while not self.halt.is_set():
            start = time.monotonic()
            try:
                if ftp is None:
                    ftp = ftplib.FTP()
                    ftp.connect(HOST, self.port, timeout=10)
                    ftp.login("bob")
                ftp.voidcmd("NOOP")
                names: list[str] = []
                ftp.retrlines("LIST", names.append)
                out = io.BytesIO()
                ftp.retrbinary("RETR known.bin", out.write)
                if not any(n.endswith(" known.bin") for n in names) or out.getvalue() != self.expected:
                    raise AssertionError(f"wrong LIST or RETR content: {names!r}")
                self.rounds.append((start, time.monotonic() - start))
            except Exception as err:  # recorded, asserted by check()
                self.errors.append(f"{time.monotonic() - start:.2f}s into a round: {err!r}")
                if ftp is not None:
                    ftp.close()
                ftp = None
            time.sleep(0.01)
        if ftp is not None:
            ftp.close()


class Served:
    """One xxftpd process serving alice (the target) and bob (the watcher)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = root = base / "root"
        self.home = root / "alice"
        (self.home / ".xxftp").mkdir(parents=True)
        (self.home / ".xxftp/password").write_text(hashlib.md5(b"pw").hexdigest() + "\n")
        (self.home / ".xxftp/size").write_text("20M\n")
        (self.home / ".xxftp/virtual").write_text("docs $root/shared-docs read\nteam $root/team-space read,write,modify\n")
        (self.home / "sub").mkdir()
        self.own = os.urandom(64 * KiB)
        (self.home / "own.bin").write_bytes(self.own)
        (root / "shared-docs").mkdir()
        (root / "shared-docs/manual.txt").write_text("read me\n")
        (root / "team-space/.xxftp").mkdir(parents=True)
        (root / "team-space/.xxftp/size").write_text("1M\n")
        (root / "bob").mkdir()
        self.known = os.urandom(256 * KiB)
        (root / "bob/known.bin").write_bytes(self.known)
        (root / "top-level.txt").write_text("outside every home\n")
        (base / "outside").mkdir()
        (base / "outside/secret.txt").write_text("secret\n")
        self.log = base / "xxftpd.log"
        self.port = free_port()
        self.proc = run_xxftpd("--root", str(root), "--host", HOST, "--port", str(self.port),
                               "--log-file", str(self.log), wait_for_port=self.port)
        self.skip = [self.home, root / "team-space", root / ".xxftpd"]  # .xxftpd: the server's status sockets
        self.before = snapshot(base, self.skip + [base / "xxftpd.log"])
        self.watcher = Watcher(self.port, self.known)
        self.watcher.start()
        self._log_seen = 0

    def raw(self, login: bool = True) -> Raw:
        raw = Raw(self.port)
        if login:
            raw.login("alice", "pw")
        return raw

    def check(self, since: float) -> None:
        """The server survived: alive, serving, untouched outside the home, no stall."""
        w = self.watcher
        assert wait_until(lambda: sum(1 for t, _ in w.rounds if t >= since) >= 2, 20), \
            f"the second client made no progress: {w.errors[-3:]}"
        assert not w.errors, f"the second client saw errors: {w.errors}"
        slow = [round(d, 2) for t, d in w.rounds if t >= since and d > HICCUP]
        assert not slow, f"the second client stalled: rounds of {slow} s"
        assert self.proc.poll() is None, "xxftpd died"
        text = self.log.read_text(errors="replace")
        new, self._log_seen = text[self._log_seen:], len(text)
        for needle in ("Traceback", "unhandled exception", "CRITICAL"):
            assert needle not in new, f"{needle} in the server log:\n{new[-3000:]}"
        ftp = ftplib.FTP()
        ftp.connect(HOST, self.port, timeout=10)
        ftp.login("alice", "pw")
        out = io.BytesIO()
        ftp.retrbinary("RETR own.bin", out.write)
        assert out.getvalue() == self.own
        assert "own.bin" in ftp.nlst()
        ftp.quit()
        assert snapshot(self.base, self.skip + [self.log]) == self.before, "something outside the home changed"
        assert wait_until(lambda: not temporaries(self.root)), temporaries(self.root)
        ledger = self.home / ".xxftp/ledger"
        assert wait_until(lambda: json.loads(ledger.read_text())["pending"] == {}), ledger.read_text()

    def stop(self) -> None:
        self.watcher.halt.set()
        self.watcher.join(20)
        durations = [d for _, d in self.watcher.rounds]
        print(f"\nsecond client: {len(durations)} NOOP+LIST+RETR rounds, "
              f"slowest {max(durations, default=0):.3f} s, errors {len(self.watcher.errors)}")
        assert "Traceback" not in stop_process(self.proc)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("hostile"))
    yield s
    s.stop()


@pytest.fixture
def survives(served):
    """The test body runs hostile input; afterwards the server must be fine."""
    since = time.monotonic()
    yield served
    served.check(since)


# --- every command with every kind of argument

COMMANDS = sorted(XxftpHandler.proto_cmds)
ARGUMENTS = [
    b"",  # no argument
    b"extra arguments here",
    b"\x00",
    b"a\x00b",
    b"\xff\xfe\xc3\x28",  # invalid UTF-8
    b"\xed\xa0\x80",  # an encoded surrogate
    b"../../../../../../etc/passwd",
    b"/..",
    b"//",
    b"~root",
    b"*?[a-",
    b"%s%n%x%d{0}",
    b"-1",
    b"99999999999999999999999999999999",
    "²".encode(),
    b"1e9",
    b"|2|::1|1|",
    b" ",
    b"\t",
    b"A" * 1900,  # long, but under pyftpdlib's 2048-byte line limit
]
DOWNLOADS = {"RETR", "LIST", "NLST", "MLSD"}
UPLOADS = {"STOR", "STOU", "APPE"}


@dataclass
class Outcome:
    line: bytes
    replies: list = field(default_factory=list)
    closed: bool = False
    problem: str = ""


def exercise(port: int, command: str, arg: bytes, login: bool) -> Outcome:
    """One fresh session: (login), the line, any transfer it starts, then NOOP."""
    line = command.encode() + (b" " + arg if arg else b"")
    out = Outcome(line)
    raw = None
    try:
        raw = Raw(port)
        if login:
            raw.login("alice", "pw")
        data = None
        if login and command in DOWNLOADS | UPLOADS:
            raw.ok("TYPE I", 200)
            data = raw.pasv()
        reply = raw.cmd(line)
        out.replies.append(reply)
        if reply is not None and reply.code < 200:  # a transfer started
            if data is None:
                raise ProtocolViolation("a transfer started without a data connection")
            if command in UPLOADS:
                try:
                    data.sendall(b"x" * 4096)
                except OSError:
                    pass
                data.close()
            else:
                read_all(data)
            reply = raw.reply()
            out.replies.append(reply)
        elif data is not None:
            data.close()
        if reply is None:
            out.closed = True
            return out
        if command == "QUIT" and not arg:
            out.closed = raw.at_eof()
            return out
        reply = raw.cmd(b"NOOP")
        out.replies.append(reply)
        out.closed = reply is None
    except (ProtocolViolation, OSError) as err:
        out.problem = repr(err)
    finally:
        if raw is not None:
            raw.close()
    return out


def judge(outcomes: list[Outcome]) -> list[str]:
    bad = []
    for o in outcomes:
        quit_ = o.line == b"QUIT"
        if o.problem:
            bad.append(f"{o.line[:80]!r}: {o.problem}")
        elif o.closed and not quit_:
            bad.append(f"{o.line[:80]!r}: connection dropped after {o.replies!r}")
        elif quit_ and not (o.closed and o.replies[0] is not None and o.replies[0].code == 221):
            bad.append(f"{o.line[:80]!r}: QUIT did not answer 221 and close: {o.replies!r}")
        elif any(b"Traceback" in r.text for r in o.replies if r is not None):
            bad.append(f"{o.line[:80]!r}: a traceback in the reply {o.replies!r}")
        elif not quit_ and (o.replies[-1] is None or o.replies[-1].code != 200):
            bad.append(f"{o.line[:80]!r}: NOOP after it did not answer 200: {o.replies!r}")
    return bad


def battery(port: int, login: bool) -> list[Outcome]:
    jobs = [(c, a) for c in COMMANDS for a in ARGUMENTS]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda job: exercise(port, *job, login), jobs))


def test_every_command_with_no_extra_and_garbage_arguments(survives):
    outcomes = battery(survives.port, login=True)
    assert len(outcomes) == len(COMMANDS) * len(ARGUMENTS) >= 48 * 20
    assert judge(outcomes) == []
    codes = {o.line: o.replies[0].code for o in outcomes if o.replies and o.replies[0]}
    # a few answers that must be exactly right
    assert codes[b"RNTO extra arguments here"] == 503
    assert codes[b"PWD extra arguments here"] == 501
    assert codes[b"DELE"] == 501
    assert codes[b"RETR ../../../../../../etc/passwd"] == 550
    assert codes[b"STOR /.."] == 550  # the home itself can't be stored over
    assert codes[b"SITE \x00"] == 500


def test_every_command_before_login(survives):
    outcomes = battery(survives.port, login=False)
    assert judge(outcomes) == []
    for o in outcomes:
        command = o.line.split(b" ")[0].decode(errors="replace")
        if XxftpHandler.proto_cmds.get(command, {}).get("auth") and o.replies[0].code != 501:
            assert o.replies[0].code == 530, o  # nothing that needs a login runs without one


# --- malformed lines


def replies_until_noop(raw: Raw, limit: int = 10000) -> list[Reply]:
    """Read replies until the 200 of a NOOP sent after the hostile data."""
    got = []
    for _ in range(limit):
        reply = raw.reply()
        if reply is None:
            return got + [None]
        got.append(reply)
        if reply.code == 200:
            return got
    raise AssertionError("NOOP never answered")


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("login", [True, False], ids=["logged-in", "before-login"])
@pytest.mark.parametrize("payload", [
    b"A" * MiB,
    b"STOR " + b"B" * MiB,
    b"\x00" * MiB,
    b"\r" * MiB,  # CR without LF
    b"\n" * MiB,  # LF without CR
    b"\xff" * MiB,  # invalid UTF-8
], ids=["letters", "stor-name", "nul", "cr", "lf", "bad-utf8"])
def test_one_megabyte_lines(survives, payload, login):
    rss = vm_rss(survives.proc.pid)
    raw = survives.raw(login)
    raw.send(payload + b"\r\nNOOP\r\n")
    got = replies_until_noop(raw)
    raw.close()
    if got[-1] is None:  # closing is allowed for over-long lines, after proper replies only
        got = got[:-1]
    assert got and all(r.code in (500, 501, 530, 200) for r in got), got[:5]
    assert any(r.code == 500 for r in got), got[:5]
    assert vm_rss(survives.proc.pid) - rss < 64 * MiB  # the server did not buffer it all


def test_one_megabyte_without_terminator_then_close(survives):
    for login in (True, False):
        raw = survives.raw(login)
        raw.send(b"C" * MiB)
        raw.close()
    raw = survives.raw()
    assert raw.ok("NOOP", 200)


@pytest.mark.parametrize("line", [
    b"NOOP\x00",
    b"\x00NOOP",
    b"NO\x00OP",
    b"NOOP\rNOOP",
    b"NOOP\r",
    b"\rNOOP",
    b"NOOP\nNOOP",
    b"\xff\xfe\xfd",
    b"CWD \xc3\x28\xa0\xa1",
    b"MKD \xf0\x28\x8c\x28",
    b"USER \xff",
    b"SITE \xff\xfe",
    b"XQUITX",
    b"STA",
    b"",
    b" ",
    b"\t",
    b"noop",
    b"NoOp",
    b" NOOP",
    b"NOOP ",
    b"\x1b[31mNOOP",
    b"\xef\xbb\xbfNOOP",  # a byte order mark
    "ＮＯＯＰ".encode(),  # full-width letters
])
def test_nul_cr_lf_and_invalid_utf8_lines(survives, line):
    for login in (True, False):
        raw = survives.raw(login)
        reply = raw.cmd(line)
        assert reply is not None and 200 <= reply.code < 600, (line, reply)
        assert raw.ok("NOOP", 200)
        raw.close()
    if line in (b"NOOP ", b"noop", b"NoOp"):
        assert reply.code == 200


def test_replies_never_echo_bare_cr_lf_or_nul(survives):
    """A reply that echoes a bare LF splits into two lines: the second one,
    chosen by whoever wrote the command, is read as a reply of its own."""
    raw = survives.raw()
    framed = {}
    for line in [b"X\n226 Transfer complete", b"NOOP\rFOO", b"MDTM a\nb", b"OPTS \n226 x",
                 b"TYPE \n226", b"SITE \n226", b"MDTM \x00", b"MFMT 20200101000000 a\nb"]:
        reply = raw.cmd(line)
        assert reply is not None
        framed[line] = well_framed(reply) or reply.text
    assert raw.ok("NOOP", 200)
    bad = {k: v for k, v in framed.items() if v is not True}
    assert bad == {}, f"replies echo control characters raw: {bad}"


# --- data connections


@pytest.mark.parametrize("line, code", [
    ("PORT 192,0,2,1,39,16", 501),  # a third host
    ("PORT 10,0,0,1,39,16", 501),
    ("PORT 127,0,0,1,0,21", 501),  # privileged
    ("PORT 127,0,0,1,0,0", 501),
    ("PORT 127,0,0,1,3,255", 501),  # 1023
    ("PORT 127,0,0,1,256,0", 501),
    ("PORT 256,0,0,1,39,16", 501),
    ("PORT -1,0,0,1,39,16", 501),
    ("PORT 127,0,0,1,39", 501),
    ("PORT 127,0,0,1,39,16,1", 501),
    ("PORT 127.0.0.1.39.16", 501),
    ("PORT a,b,c,d,e,f", 501),
    ("PORT 127,0,0,1,99999999999999999999,1", 501),
    ("EPRT |1|192.0.2.1|10000|", 501),
    ("EPRT |1|127.0.0.1|21|", 501),
    ("EPRT |1|127.0.0.1|0|", 501),
    ("EPRT |1|127.0.0.1|65536|", 501),
    ("EPRT |1|127.0.0.1|-5|", 501),
    ("EPRT |1|127.000.000.001|10000|", 501),  # not the client's address as written
    ("EPRT |1|localhost|10000|", 501),
    ("EPRT |2|::1|10000|", 522),  # IPv6 on an IPv4 control connection
    ("EPRT |3|127.0.0.1|10000|", 501),
    ("EPRT |1|127.0.0.1|", 501),
    ("EPRT |||", 501),
    ("EPRT x", 501),
    ("EPRT ||||||", 501),
    ("EPSV 3", 501),
    ("EPSV 2", 522),
    ("EPSV foo", 501),
])
def test_port_and_eprt_refused(survives, line, code):
    raw = survives.raw()
    assert raw.cmd(line).code == code
    data = raw.pasv()  # the session still opens data connections
    assert raw.ok("NLST", 125, 150)
    assert b"own.bin" in read_all(data)
    assert raw.reply().code == 226
    raw.close()


def test_port_to_a_closed_port_and_to_the_control_port(survives):
    raw = survives.raw()
    closed = free_port()
    assert raw.cmd(f"PORT 127,0,0,1,{closed >> 8},{closed & 255}").code == 425
    assert raw.ok("NOOP", 200)
    # the server connects to its own control port and sends a listing there
    port = survives.port
    assert raw.ok(f"PORT 127,0,0,1,{port >> 8},{port & 255}", 200)
    reply = raw.cmd("LIST")
    if reply.code in (125, 150):
        raw.sock.settimeout(3)
        try:
            reply = raw.reply()
        except TimeoutError:
            # The greeting of the session the server opened to itself can close
            # the data connection before LIST uses it; LIST then waits (150)
            # for a connection that never comes. ABOR must still end it.
            reply = raw.cmd("ABOR")
            assert reply is not None and reply.code in (225, 226), reply
        raw.sock.settimeout(15)
    assert reply.code in (225, 226, 425, 426), reply
    assert raw.ok("NOOP", 200)


def rest_then(raw: Raw, position: int | str, command: str, payload: bytes = b"") -> list[Reply]:
    raw.ok("TYPE I", 200)
    data = raw.pasv()
    rest = raw.cmd(f"REST {position}")
    replies = [rest]
    reply = raw.cmd(command)
    replies.append(reply)
    if reply.code < 200:
        if payload:
            data.sendall(payload)
            data.close()
        else:
            read_all(data)
        replies.append(raw.reply())
    else:
        data.close()
    return replies


def test_rest_beyond_end_of_file_then_retr_stor_appe_stou(survives):
    home = survives.home
    (home / "rest.bin").write_bytes(b"r" * 1000)
    raw = survives.raw()
    for position in (1001, 10**12, 10**40):
        rest, retr = rest_then(raw, position, "RETR rest.bin")
        assert rest.code == 350 and retr.code == 554, retr
        rest, stor = rest_then(raw, position, "STOR rest.bin", b"x" * 100)
        assert rest.code == 350 and stor.code == 554, stor
    rest, appe = rest_then(raw, 10, "APPE rest.bin")
    assert appe.code == 450
    rest, stou = rest_then(raw, 10, "STOU")
    assert stou.code == 450
    rest, missing = rest_then(raw, 10, "STOR not-there.bin", b"x")
    assert missing.code == 550 and not (home / "not-there.bin").exists()
    for bad in ("-1", "abc", "1e3", "²", "0x10", ""):
        assert raw.cmd(f"REST {bad}".rstrip()).code == 501
    assert (home / "rest.bin").read_bytes() == b"r" * 1000
    # REST exactly at the end works both ways
    assert [r.code // 100 for r in rest_then(raw, 1000, "RETR rest.bin")] == [3, 1, 2]
    assert [r.code // 100 for r in rest_then(raw, 1000, "STOR rest.bin", b"tail")] == [3, 1, 2]
    assert (home / "rest.bin").read_bytes() == b"r" * 1000 + b"tail"


def test_rnto_without_rnfr_and_other_sequences(survives):
    home = survives.home
    (home / "ren.txt").write_text("ren")
    raw = survives.raw()
    assert raw.cmd("RNTO x.txt").code == 503
    assert raw.cmd("RNFR nothing-here").code == 550
    assert raw.cmd("RNTO x.txt").code == 503
    assert raw.ok("RNFR ren.txt", 350)
    assert raw.cmd("RNTO").code == 501
    assert raw.ok("RNFR ren.txt", 350)
    assert raw.cmd("RNTO .xxftp/password").code == 550
    assert raw.ok("RNFR ren.txt", 350)
    assert raw.cmd("RNTO /").code == 550
    assert raw.ok("RNFR ren.txt", 350)
    assert raw.cmd("RNTO docs/ren.txt").code == 550  # read-only mount
    assert raw.ok("RNFR ren.txt", 350)
    assert raw.cmd("RNTO docs").code == 550  # a mount point
    assert raw.cmd("RNFR /").code == 550
    assert raw.cmd("RNFR docs").code == 550
    assert raw.cmd("RNFR .xxftp").code == 550
    assert raw.ok("RNFR ren.txt", 350)
    assert raw.ok("REIN", 230)  # REIN forgets the RNFR and the login
    raw.login("alice", "pw")
    assert raw.cmd("RNTO gone.txt").code == 503
    assert raw.ok("RNFR ren.txt", 350)
    assert raw.ok("RNTO ../../../../moved.txt", 250)  # .. is clamped at the home
    assert (home / "moved.txt").read_text() == "ren"
    assert raw.ok("DELE moved.txt", 250)
    raw.close()


STOR_NAMES = [
    b"a\rb",
    b"a\r\x00b",  # RFC 2640's CR NUL
    b"a\nb",
    b"a\x00b",
    b"../../escaped.txt",
    b"/../../escaped.txt",
    b"docs/../../escaped.txt",
    b"sub/../../../escaped.txt",
    b"//escaped-root.txt",
    b"./dot-slash.txt",
    b"sub/",
    b"sub//double.txt",
    b"/",
    b".",
    b"..",
    b"docs",
    b"team",
    b"docs/new.txt",
    b".xxftp/password",
    b".xxftp/size",
    b"sub/.xxftp/virtual",
    b".hidden",
    b"..\\..\\backslash.txt",
    b"%2e%2e/percent.txt",
    b"~/tilde.txt",
    b"nosuchdir/x.txt",
    b"sub/" + b"n" * 300,  # a name too long for the filesystem
    b"\xff\xfe.txt",
    "\u202egnp.exe".encode(),
    b"team/../../escaped.txt",
    b"team/ok.txt",
]


def test_stor_of_hostile_names(survives):
    home, root = survives.home, survives.root
    size_before = json.loads((home / ".xxftp/ledger").read_text())["used"]
    codes = {}
    for name in STOR_NAMES:
        raw = survives.raw()
        raw.ok("TYPE I", 200)
        data = raw.pasv()
        reply = raw.cmd(b"STOR " + name)
        if reply.code < 200:
            data.sendall(b"payload")
            data.close()
            reply = raw.reply()
        else:
            data.close()
        codes[name] = reply.code
        assert raw.ok("NOOP", 200)
        raw.close()
    assert all(c == 226 or 400 <= c < 600 for c in codes.values()), codes
    for name in (b"a\rb", b"a\r\x00b", b"a\nb", b"a\x00b", b"/", b".", b"..", b"docs", b"team", b"docs/new.txt",
                 b".xxftp/password", b".xxftp/size", b"sub/.xxftp/virtual", b".hidden", b"nosuchdir/x.txt",
                 b"..\\..\\backslash.txt", b"%2e%2e/percent.txt", b"~/tilde.txt"):
        assert codes[name] >= 500, (name, codes[name])
    for name in (b"sub/", b"sub/" + b"n" * 300):  # refused, perhaps only when the upload ends
        assert codes[name] >= 400, (name, codes[name])
    assert (home / "sub").is_dir() and not [p for p in (home / "sub").iterdir() if len(p.name) > 255 - 10]
    # what was accepted landed inside the home (or the writable mount), nowhere else
    for name in (b"../../escaped.txt", b"/../../escaped.txt", b"docs/../../escaped.txt",
                 b"sub/../../../escaped.txt", b"team/../../escaped.txt"):
        assert codes[name] == 226, (name, codes[name])
    assert (home / "escaped.txt").read_bytes() == b"payload"
    assert codes[b"//escaped-root.txt"] == 226 and (home / "escaped-root.txt").exists()
    assert codes[b"sub//double.txt"] == 226 and (home / "sub/double.txt").exists()
    assert codes[b"team/ok.txt"] == 226 and (root / "team-space/ok.txt").exists()
    assert not (root / "escaped.txt").exists() and not (root.parent / "escaped.txt").exists()
    assert (home / ".xxftp/password").read_text().strip() == hashlib.md5(b"pw").hexdigest()
    assert not (home / ".hidden").exists() and not (home / "sub/.xxftp").exists()
    used = json.loads((home / ".xxftp/ledger").read_text())["used"]
    assert used > size_before  # the accepted uploads were charged


# --- quota commands with garbage


@pytest.mark.parametrize("arg", [
    "\x00", "../../../..", "docs", "team", ".xxftp", ".xxftp/size", "-1", "%s%n", "A" * 1900,
    "nosuch/dir", "/..", "*", "own.bin", "team/../docs", "\xff",
])
def test_site_quota_with_garbage(survives, arg):
    raw = survives.raw()
    reply = raw.cmd(f"SITE QUOTA {arg}".encode("utf-8", "surrogateescape"))
    assert reply.code in (200, 550), reply
    assert raw.ok("SITE QUOTA", 200)
    assert b"Traceback" not in reply.text
    for line in ("SITE", "SITE QUOTAX", "SITE quota", "site quota /team", "SITE  QUOTA"):
        reply = raw.cmd(line)
        assert reply is not None and reply.code in (200, 500, 501, 550), (line, reply)
    assert raw.ok("NOOP", 200)


@pytest.mark.parametrize("arg, code", [
    ("²", 202), ("-1", 202), ("1e9", 202), ("9" * 200, 552), ("1" + "0" * 30, 552), ("0", 202),
    ("1 R 2", 202), ("R 5", 202), ("0x10", 202), ("١٢٣", 202), ("\x00", 202), ("20971520", 552),
    ("1024", 202), ("+5", 202), ("5" * 5000, None),
])
def test_allo_with_odd_numbers(survives, arg, code):
    raw = survives.raw()
    reply = raw.cmd(f"ALLO {arg}".encode())
    if code is None:  # longer than a command line may be: one reply, then the next command's own
        assert reply.code == 500
    else:
        assert reply.code == code, reply
    assert raw.ok("NOOP", 200)
    raw.ok("CWD team", 250)
    assert raw.cmd("ALLO 1048577").code == 552  # the 1 MiB tree of the mount
    assert raw.cmd("ALLO 1").code == 202


# --- STOU is an upload like any other (it once wrote past the quota)


def test_stou_is_held_to_the_quota(survives):
    """STOU stores like STOR, so the tree's limit must hold for it too."""
    team = survives.root / "team-space"
    raw = survives.raw()
    raw.ok("TYPE I", 200)
    raw.ok("CWD team", 250)
    data = raw.pasv()
    reply = raw.cmd("STOU")
    assert reply.code in (125, 150)
    try:
        data.sendall(os.urandom(2 * MiB))  # the team tree allows 1 MiB
    except OSError:
        pass
    data.close()
    final = raw.reply()
    stored = [p for p in team.iterdir() if p.name.startswith("ftpd.")]
    used = json.loads((team / ".xxftp/ledger").read_text())["used"]
    on_disk = sum(p.stat().st_size for p in team.iterdir() if p.is_file())
    for p in stored:  # leave the tree as it was for the next tests
        p.unlink()
    assert final.code == 552, f"STOU of 2 MiB into a 1 MiB tree answered {final!r}"
    assert on_disk <= MiB and used == on_disk
