"""Control and data connections that can't be hijacked or confused, over real sockets.

Data connections bound to their session (TLS session resumption under
PROT P; the first connection from the control connection's address in
the clear), the passive port range kept, nothing smuggled past AUTH TLS,
one reply per command line, and the TLS edge cases.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from OpenSSL import SSL

from conftest import HOST, ResumingFTP_TLS, free_port, run_xxftpd, stop_process, wait_until
from xxftp_pyftpdlib import certs, passive
from xxftp_pyftpdlib.server import ConfigError, Options, make_handler

SECRET = b"ALICE-PRIVATE-DATA " * 1000


@pytest.fixture(autouse=True)
def no_traceback(caplog):
    """Whatever a test tries, the server logs no traceback and no error."""
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, "\n".join(r.getMessage() for r in bad[:3])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return certs.self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def homes(tree):
    tree.user("alice", password="pw", size="10M")
    tree.user("bob", password="pw", size="10M")
    tree.file("alice/secret.txt", SECRET)
    tree.file("alice/victim.txt", b"keep me")
    return tree


@pytest.fixture
def tls_server(homes, pair, start_server):
    cert, key = pair

    def start(**attrs):
        from xxftp_pyftpdlib import XxftpTLSHandler
        return start_server(homes.root, handler_base=XxftpTLSHandler, certfile=cert, keyfile=key,
                            ssl_context=None, **attrs)
    return start


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def tls_login(port: int, user: str = "alice", resume: bool = True) -> ftplib.FTP_TLS:
    ftp = (ResumingFTP_TLS if resume else ftplib.FTP_TLS)(context=client_context())
    ftp.connect(HOST, port, timeout=10)
    ftp.login(user, "pw")
    ftp.prot_p()
    return ftp


def pasv_port(ftp: ftplib.FTP) -> int:
    return int(ftp.sendcmd("EPSV").split("|")[3])


def read_all(sock: socket.socket, timeout: float = 3.0) -> bytes:
    """Everything a data connection yields until it closes (or goes quiet)."""
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
    except (OSError, ssl.SSLError):
        return got


class Raw:
    """A control connection spoken byte for byte."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.buf = b""
        assert self.reply().startswith("220")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def reply(self) -> str:
        """One whole reply (a multi-line one joined by newlines)."""
        first = self.line()
        lines = [first]
        if first[3:4] == "-":
            while not (lines[-1][:3] == first[:3] and lines[-1][3:4] == " "):
                lines.append(self.line())
        return "\n".join(lines)

    def nothing_pending(self, wait: float = 0.3) -> bool:
        """No reply bytes arrive unasked within ``wait`` seconds."""
        if self.buf:
            return False
        self.sock.settimeout(wait)
        try:
            return not self.sock.recv(1, socket.MSG_PEEK)
        except (socket.timeout, BlockingIOError):
            return True
        finally:
            self.sock.settimeout(10)

    def starttls(self) -> None:
        self.send(b"AUTH TLS\r\n")
        assert self.reply().startswith("234")
        assert not self.buf
        self.sock = client_context().wrap_socket(self.sock)

    def close(self) -> None:
        self.sock.close()


# --- data connections bound to their session (PROT P)


def test_a_stranger_who_takes_the_passive_port_first_gets_nothing_and_the_client_its_file(tls_server, caplog):
    srv = tls_server()
    ftp = tls_login(srv.port)
    ftp.voidcmd("TYPE I")
    port = pasv_port(ftp)
    # Same address, fresh TLS session, before the client connects or asks.
    stranger = client_context().wrap_socket(socket.create_connection((HOST, port), timeout=10))
    assert read_all(stranger) == b""
    stranger.close()
    data = socket.create_connection((HOST, port), timeout=10)
    ftp.sendcmd("RETR secret.txt")
    data = ftp.context.wrap_socket(data, session=ftp.sock.session)
    assert data.session_reused
    assert read_all(data, timeout=10) == SECRET
    data.close()
    assert ftp.voidresp().startswith("226")
    assert "did not resume the control connection's TLS session" in caplog.text
    ftp.quit()


def _race(port: int, stranger_tls: bool, stolen: list, stop) -> None:
    """A stranger on the client's address who hammers the passive port."""
    while not stop.is_set():
        try:
            sock = socket.create_connection((HOST, port), timeout=2)
        except OSError:
            time.sleep(0.001)
            continue
        try:
            if stranger_tls:
                sock = client_context().wrap_socket(sock)
            got = read_all(sock, timeout=2)
        except (OSError, ssl.SSLError):
            got = b""
        finally:
            sock.close()
        stolen.append(len(got))


def test_strangers_racing_for_the_port_never_get_a_byte(tls_server):
    """Each round a stranger thread connects to the announced port as fast
    as it can while the client connects and downloads: under PROT P with
    reuse required the client gets every file and the stranger nothing."""
    srv = tls_server()
    ftp = tls_login(srv.port)
    ftp.voidcmd("TYPE I")
    rounds = int(os.environ.get("XXFTPD_RACES", "20"))
    served = 0
    stolen: list[int] = []
    for _ in range(rounds):
        port = pasv_port(ftp)
        stop = threading.Event()
        stranger = threading.Thread(target=_race, args=(port, True, stolen, stop))
        stranger.start()
        try:
            data = socket.create_connection((HOST, port), timeout=10)
            assert ftp.sendcmd("RETR secret.txt")[:3] in ("125", "150")
            try:
                data = ftp.context.wrap_socket(data, session=ftp.sock.session)
                got = read_all(data, timeout=10)
            except (OSError, ssl.SSLError):
                got = b""
            data.close()
            try:
                ftp.voidresp()
                served += got == SECRET
            except ftplib.error_perm as err:  # the stranger's failed handshake came first: 522, nothing sent
                assert str(err).startswith("522")
        finally:
            stop.set()
            stranger.join()
    print(f"{rounds} rounds: client served {served}, stranger attempts {len(stolen)}, bytes stolen {sum(stolen)}")
    assert sum(stolen) == 0
    assert served >= rounds // 2  # mostly the client wins the port anyway
    ftp.quit()


def test_a_stranger_who_resumes_his_own_session_gets_nothing(tls_server, homes):
    """Resuming *a* session of this server is not enough: it must be this control connection's."""
    srv = tls_server()
    alice = tls_login(srv.port)
    bob = tls_login(srv.port, "bob")
    alice.voidcmd("TYPE I")
    port = pasv_port(alice)
    alice.sendcmd("RETR secret.txt")  # waiting for its data connection
    raw = socket.create_connection((HOST, port), timeout=10)
    stolen = bob.context.wrap_socket(raw, session=bob.sock.session)
    assert stolen.session_reused  # a real resumption, of bob's session
    assert read_all(stolen) == b""
    stolen.close()
    with pytest.raises(ftplib.error_perm, match="^522"):
        alice.voidresp()  # the waiting transfer fails; its data went nowhere
    assert alice.sendcmd("NOOP").startswith("200")  # the session goes on
    assert (homes.root / "alice/secret.txt").read_bytes() == SECRET
    out = io.BytesIO()
    alice.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == SECRET
    alice.quit()
    bob.quit()


def test_a_stranger_cannot_feed_an_upload(tls_server, homes):
    srv = tls_server()
    ftp = tls_login(srv.port)
    ftp.voidcmd("TYPE I")
    port = pasv_port(ftp)
    stranger = client_context().wrap_socket(socket.create_connection((HOST, port), timeout=10))
    try:
        stranger.sendall(b"FORGED" * 1000)
    except OSError:
        pass
    read_all(stranger, timeout=1)
    stranger.close()
    data = socket.create_connection((HOST, port), timeout=10)
    ftp.sendcmd("STOR up.bin")
    data = ftp.context.wrap_socket(data, session=ftp.sock.session)
    data.sendall(b"genuine")
    data.unwrap()
    data.close()
    assert ftp.voidresp().startswith("226")
    assert (homes.root / "alice/up.bin").read_bytes() == b"genuine"
    ftp.quit()


def test_a_client_that_cannot_resume_gets_522_at_once_and_off_lets_it_through(tls_server):
    """ftplib does not resume sessions (a fresh one per data connection)."""
    srv = tls_server()
    ftp = tls_login(srv.port, resume=False)
    started = time.monotonic()
    try:
        ftp.retrbinary("RETR secret.txt", lambda b: None)
    except ftplib.error_perm as err:
        assert str(err).startswith("522")
    except (ssl.SSLError, OSError):  # the server closed the data connection under ftplib's feet
        with pytest.raises(ftplib.error_perm, match="^522"):
            ftp.voidresp()
    else:
        pytest.fail("a data connection with a fresh TLS session was served")
    assert time.monotonic() - started < passive.WINDOW / 2  # not after the listener's window
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()
    off = tls_server(tls_session_reuse="off")
    ftp = tls_login(off.port, resume=False)
    out = io.BytesIO()
    ftp.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == SECRET
    ftp.quit()


def test_active_mode_data_connections_must_resume_too(tls_server):
    srv = tls_server()
    ftp = tls_login(srv.port)
    ftp.set_pasv(False)
    out = io.BytesIO()
    ftp.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == SECRET
    ftp.quit()
    ftp = tls_login(srv.port, resume=False)
    ftp.set_pasv(False)
    try:
        ftp.retrbinary("RETR secret.txt", lambda b: None)
    except ftplib.error_perm as err:
        assert str(err).startswith("522")
    except (ssl.SSLError, OSError):
        with pytest.raises(ftplib.error_perm, match="^522"):
            ftp.voidresp()
    else:
        pytest.fail("an active data connection with a fresh TLS session was served")
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()


def test_lftp_and_curl_resume_the_session_under_required(homes, pair, tmp_path):
    for tool in ("curl", "lftp"):
        assert shutil.which(tool), f"{tool} is needed (installed by tests/debian-packages.sh)"
    port = free_port()
    log = tmp_path / "log"
    proc = run_xxftpd("--root", str(homes.root), "--host", HOST, "--port", str(port), "--tls",
                      "--certfile", pair[0], "--keyfile", pair[1], "--tls-session-reuse", "required",
                      "--tls-data-required", "--log-file", str(log), wait_for_port=port)
    try:
        url = f"ftp://{HOST}:{port}/"
        src = tmp_path / "up.bin"
        src.write_bytes(os.urandom(200 * 1024))
        subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:pw", "-T", str(src), url + "c.bin"],
                       check=True, timeout=30)
        got = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:pw", url + "secret.txt"],
                             check=True, timeout=30, capture_output=True).stdout
        assert got == SECRET
        script = (f"set ssl:verify-certificate no; set ftp:ssl-force yes; set ftp:ssl-protect-data yes; "
                  f"open -u alice,pw ftp://{HOST}:{port}; put {src} -o l.bin; "
                  f"get secret.txt -o {tmp_path / 'l-secret'}; cls -1")
        done = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "l-secret").read_bytes() == SECRET
        for name in ("c.bin", "l.bin"):
            assert (homes.root / "alice" / name).read_bytes() == src.read_bytes()
    finally:
        stop_process(proc)
    assert "did not resume" not in log.read_text()


# --- clear data connections


def test_clear_passive_port_takes_only_the_first_connection(homes, start_server, connect):
    srv = start_server(homes.root)
    ftp = connect(srv.port, "alice", "pw")
    ftp.voidcmd("TYPE I")
    port = pasv_port(ftp)
    first = socket.create_connection((HOST, port), timeout=10)
    time.sleep(0.2)  # accepted; the listener is gone
    with pytest.raises(OSError):
        second = socket.create_connection((HOST, port), timeout=2)
        try:
            if read_all(second, timeout=1) == b"":
                raise ConnectionResetError("nothing")
        finally:
            second.close()
    ftp.sendcmd("RETR secret.txt")
    assert read_all(first, timeout=10) == SECRET
    first.close()
    assert ftp.voidresp().startswith("226")


def test_a_foreign_address_is_refused_without_a_reply_nobody_asked_for(homes, start_server, caplog):
    srv = start_server(homes.root)
    raw = Raw(srv.port)
    raw.send(b"USER alice\r\n")
    raw.reply()
    raw.send(b"PASS pw\r\n")
    assert raw.reply().startswith("230")
    raw.send(b"EPSV\r\n")
    port = int(raw.reply().split("|")[3])
    foreign = socket.socket()
    foreign.bind(("127.0.0.2", 0))
    foreign.settimeout(5)
    foreign.connect((HOST, port))
    assert read_all(foreign, timeout=1) == b""
    foreign.close()
    assert wait_until(lambda: "foreign address 127.0.0.2" in caplog.text, 5)
    assert raw.nothing_pending()  # pyftpdlib answered "425 Rejected ..." to nobody's command
    data = socket.create_connection((HOST, port), timeout=10)
    raw.send(b"RETR secret.txt\r\n")
    assert raw.reply()[:3] in ("125", "150")
    assert read_all(data, timeout=10) == SECRET
    data.close()
    assert raw.reply().startswith("226")
    raw.close()


def test_a_passive_listener_that_expires_answers_only_a_waiting_command(homes, start_server):
    srv = start_server(homes.root, passive_dtp=type("Quick", (passive.XxftpPassiveDTP,), {"timeout": 0.5}))
    raw = Raw(srv.port)
    raw.send(b"USER alice\r\nPASS pw\r\n")
    raw.reply()
    assert raw.reply().startswith("230")
    raw.send(b"EPSV\r\n")
    raw.reply()
    time.sleep(1.0)  # expired with nothing waiting: no reply
    assert raw.nothing_pending()
    raw.send(b"NOOP\r\n")
    assert raw.reply().startswith("200")
    raw.send(b"EPSV\r\n")
    raw.reply()
    raw.send(b"STOR waiting.bin\r\n")
    assert raw.reply()[:3] in ("125", "150")
    assert raw.reply().startswith("425")  # the waiting upload's own final reply
    raw.send(b"NOOP\r\n")
    assert raw.reply().startswith("200")
    assert not (homes.root / "alice/waiting.bin").exists()
    raw.close()


# --- the passive port range


def test_a_busy_passive_range_is_425_never_a_port_outside(homes, start_server, connect, caplog):
    port = free_port()
    srv = start_server(homes.root, passive_ports=range(port, port + 1))
    first = connect(srv.port, "alice", "pw")
    assert pasv_port(first) == port  # the one port of the range
    second = connect(srv.port, "bob", "pw")
    with pytest.raises(ftplib.error_temp, match="^425"):
        second.sendcmd("EPSV")
    with pytest.raises(ftplib.error_temp, match="^425"):
        second.sendcmd("PASV")
    assert "no free port in the passive port range" in caplog.text
    assert second.sendcmd("NOOP").startswith("200")  # the session goes on
    first.voidcmd("TYPE I")
    data = socket.create_connection((HOST, port), timeout=10)
    first.sendcmd("RETR secret.txt")
    assert read_all(data, timeout=10) == SECRET
    data.close()
    assert first.voidresp().startswith("226")
    assert pasv_port(second) == port  # free again


@contextlib.contextmanager
def no_descriptor_left(pid: int):
    """While the block runs, the process ``pid`` can't open one more descriptor."""
    in_use = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    lowest_free = min(set(range(len(in_use) + 1)) - in_use)  # the next descriptor's number
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={lowest_free}:4096"], check=True)
    try:
        yield
    finally:
        subprocess.run(["prlimit", f"--pid={pid}", "--nofile=4096:4096"], check=True)


@contextlib.contextmanager
def alice_on_the_command(homes, log):
    """alice logged in (TYPE I) on the real ``xxftpd``, which logs to ``log``:
    (process, session); on leaving, the session still downloads and quits."""
    port = free_port()
    proc = run_xxftpd("--root", str(homes.root), "--host", HOST, "--port", str(port), "--log-file", str(log),
                      wait_for_port=port)
    try:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        ftp.voidcmd("TYPE I")
        yield proc, ftp
        assert ftp.sendcmd("NOOP").startswith("200")
        out = io.BytesIO()
        ftp.retrbinary("RETR secret.txt", out.write)
        assert out.getvalue() == SECRET
        ftp.quit()
    finally:
        stop_process(proc)
    assert "Traceback" not in log.read_text()


def test_running_out_of_descriptors_at_pasv_is_425_and_the_session_goes_on(homes, tmp_path):
    log = tmp_path / "log"
    with alice_on_the_command(homes, log) as (proc, ftp), no_descriptor_left(proc.pid):
        with pytest.raises(ftplib.error_temp, match="^425"):
            ftp.sendcmd("EPSV")
        assert ftp.sendcmd("NOOP").startswith("200")
    assert "no passive listener: Too many open files" in log.read_text()


def test_running_out_of_descriptors_at_the_data_accept_is_425_and_the_session_goes_on(homes, tmp_path):
    log = tmp_path / "log"
    with alice_on_the_command(homes, log) as (proc, ftp):
        data_port = pasv_port(ftp)
        assert ftp.sendcmd("RETR secret.txt")[:3] in ("125", "150")  # waiting for its data connection
        with no_descriptor_left(proc.pid):
            try:
                data = socket.create_connection((HOST, data_port), timeout=10)
            except ConnectionError:  # the listener closed before connect() returned
                data = None
            with pytest.raises(ftplib.error_temp, match="^425"):
                ftp.voidresp()
            if data is not None:
                assert read_all(data, timeout=2) == b""
                data.close()
    assert "cannot accept a data connection: Too many open files" in log.read_text()


# --- nothing smuggled past AUTH TLS


def test_commands_sent_with_auth_tls_are_discarded_never_run(tls_server, homes, caplog):
    srv = tls_server()
    raw = Raw(srv.port)
    raw.send(b"AUTH TLS\r\nUSER alice\r\nPASS pw\r\nDELE victim.txt\r\n")  # one packet
    assert raw.reply().startswith("234")
    time.sleep(0.2)
    assert raw.nothing_pending()  # no other plaintext reply
    raw.sock = client_context().wrap_socket(raw.sock)
    raw.send(b"PWD\r\n")
    assert raw.reply().startswith("530")  # the smuggled login never happened
    raw.send(b"NOOP\r\n")
    assert raw.reply().startswith("200")
    assert (homes.root / "alice/victim.txt").read_bytes() == b"keep me"
    assert re.search(r"discarded 38 bytes received after AUTH before the TLS handshake", caplog.text)
    assert "<- USER" not in caplog.text and "<- DELE" not in caplog.text
    raw.close()


def test_plaintext_after_auth_tls_ends_the_connection_unanswered(tls_server, homes, start_server, connect):
    srv = tls_server()
    raw = Raw(srv.port)
    raw.send(b"AUTH TLS\r\n")
    assert raw.reply().startswith("234")
    raw.send(b"USER alice\r\n")  # no handshake: these bytes are not a ClientHello
    got = read_all(raw.sock, timeout=5)
    assert b"331" not in got and b"230" not in got  # at most a TLS alert, then the close
    raw.close()
    ftp = tls_login(srv.port)  # the server is unharmed
    ftp.quit()


# --- one reply per command line


@pytest.mark.parametrize("line, follow", [
    (b"X" * 5000, b""),
    (b"X" * 5000, b"NOOP\r\n"),
    (b"NOOP " + b"y" * 3000, b"NOOP\r\n"),
    (b"RETR " + b"z" * 70000, b"NOOP\r\n"),  # longer than one read
    (b"X" * 2049, b"NOOP\r\n"),
], ids=["alone", "then-noop", "noop-with-long-arg", "longer-than-a-read", "one-past-the-limit"])
def test_an_overlong_line_gets_exactly_one_reply(homes, start_server, line, follow):
    srv = start_server(homes.root)
    raw = Raw(srv.port)
    raw.send(line + b"\r\n" + follow)
    assert raw.reply() == "500 Command line too long."
    if follow:
        assert raw.reply().startswith("200")
    assert raw.nothing_pending()
    raw.send(b"NOOP\r\n")
    assert raw.reply().startswith("200")
    raw.close()


def test_odd_lines_get_one_reply_each(homes, start_server):
    srv = start_server(homes.root)
    raw = Raw(srv.port)
    line = b"USER " + b"y" * (2048 - 5)  # exactly the limit: an ordinary line
    raw.send(b"   \r\n" + b"\r\n" + b" NOOP\r\n" + line + b"\r\n" + b"NOOP\n\r\n" + b"NOOP\r\n")
    replies = [raw.reply() for _ in range(6)]
    assert [r[:3] for r in replies] == ["500", "500", "500", "331", "500", "200"], replies
    assert raw.nothing_pending()
    raw.close()


# --- TLS edge cases


def test_auth_tls_twice_and_ccc_get_clear_refusals(tls_server):
    srv = tls_server()
    raw = Raw(srv.port)
    raw.send(b"CCC\r\n")
    assert raw.reply().startswith("534")
    raw.starttls()
    raw.send(b"AUTH TLS\r\n")
    assert raw.reply().startswith("503")
    raw.send(b"CCC\r\n")
    assert raw.reply().startswith("534")
    raw.send(b"USER alice\r\nPASS pw\r\n")
    raw.reply()
    assert raw.reply().startswith("230")  # still protected, still in step
    raw.close()


def test_pbsz_takes_only_a_32_bit_number(tls_server):
    srv = tls_server()
    raw = Raw(srv.port)
    raw.send(b"PBSZ 0\r\n")
    assert raw.reply().startswith("503")  # before AUTH
    raw.starttls()
    for bad in (b"PBSZ abc", b"PBSZ -1", b"PBSZ 4294967296", b"PBSZ 1e3", b"PBSZ \xc2\xb2", b"PBSZ"):
        raw.send(bad + b"\r\n")
        assert raw.reply().startswith("501"), bad
    raw.send(b"PROT P\r\n")
    assert raw.reply().startswith("503")  # no valid PBSZ yet
    raw.send(b"PBSZ 1024\r\n")
    assert raw.reply() == "200 PBSZ=0 successful."
    raw.send(b"PROT P\r\n")
    assert raw.reply().startswith("200")
    raw.close()


def test_prot_c_is_refused_when_data_must_be_protected(tls_server):
    srv = tls_server(tls_data_required=True)
    ftp = tls_login(srv.port)
    with pytest.raises(ftplib.error_perm, match="^534"):
        ftp.sendcmd("PROT C")
    out = io.BytesIO()  # still PROT P: the transfer is protected and works
    ftp.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == SECRET
    assert ftp.sendcmd("PROT P").startswith("200")
    ftp.quit()
    open_srv = tls_server()
    ftp = tls_login(open_srv.port)
    assert ftp.sendcmd("PROT C").startswith("200")  # allowed when not required
    ftp.prot_c()
    out = io.BytesIO()
    ftp.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == SECRET
    ftp.quit()


@pytest.mark.parametrize("drip", [False, True])
def test_a_handshake_that_never_completes_is_closed_within_the_timeout(tls_server, drip):
    srv = tls_server(timeout=2)
    raw = Raw(srv.port)
    raw.send(b"AUTH TLS\r\n")
    assert raw.reply().startswith("234")
    hello = bytes.fromhex("16030100")  # the start of a ClientHello, one byte at a time
    started = time.monotonic()
    raw.sock.settimeout(0.5)
    closed = False
    while time.monotonic() - started < 15 and not closed:
        try:
            if drip:
                raw.sock.send(hello[:1])
                hello = hello[1:] or b"\x00"
            closed = raw.sock.recv(1) == b""
        except socket.timeout:
            pass
        except OSError:
            closed = True
    assert closed
    assert time.monotonic() - started < 2 * 3  # the control timeout, not "forever"
    assert wait_until(lambda: not srv.server.ip_map, 5)  # the slot is free
    raw.close()


def retrying(call, *args):
    """A pyOpenSSL call on a socket with a timeout, retried until it is done (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return call(*args)
        except SSL.WantReadError:
            assert time.monotonic() < deadline, "no answer"
            time.sleep(0.01)


def test_client_renegotiation_is_refused_and_harmless(tls_server, caplog):
    srv = tls_server()
    raw = Raw(srv.port)
    raw.send(b"AUTH TLS\r\n")
    assert raw.reply().startswith("234")
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    conn = SSL.Connection(context, raw.sock)
    conn.set_connect_state()
    retrying(conn.do_handshake)
    conn.sendall(b"USER alice\r\n")
    assert retrying(conn.recv, 1024).startswith(b"331")
    renegotiated = True
    try:
        assert conn.renegotiate()
        retrying(conn.do_handshake)
        conn.sendall(b"PASS pw\r\n")
        retrying(conn.recv, 1024)
    except (SSL.Error, OSError):
        renegotiated = False
    assert not renegotiated or conn.total_renegotiations() == 0
    raw.sock.close()
    ftp = tls_login(srv.port)  # the server goes on serving
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    if not renegotiated:
        assert wait_until(lambda: "TLS error on the control connection" in caplog.text, 5)


def test_an_unasked_client_certificate_changes_nothing(tls_server, tmp_path):
    srv = tls_server()
    cert, key = certs.self_signed(str(tmp_path))  # some certificate no one trusts
    ftp = ResumingFTP_TLS(context=client_context())
    ftp.context.load_cert_chain(cert, key)
    ftp.connect(HOST, srv.port, timeout=10)
    ftp.login("alice", "pw")
    ftp.prot_p()
    out = io.BytesIO()
    ftp.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == SECRET
    ftp.quit()


# --- the setting


def test_tls_session_reuse_setting(homes, pair, tmp_path):
    with pytest.raises(ConfigError, match="--tls"):
        make_handler(Options(root=str(homes.root), tls_session_reuse="off"))
    with pytest.raises(ConfigError, match="tls-session-reuse"):
        make_handler(Options(root=str(homes.root), tls=True, certfile=pair[0], keyfile=pair[1],
                             tls_session_reuse="sometimes"))
    handler = make_handler(Options(root=str(homes.root), tls=True, certfile=pair[0], keyfile=pair[1]))
    assert handler.tls_session_reuse == "required"
    bad = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(homes.root), "--tls",
                          "--certfile", pair[0], "--tls-session-reuse", "sometimes"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--tls-session-reuse" in bad.stderr and "Traceback" not in bad.stderr
    config = tmp_path / "x.toml"
    config.write_text('tls_session_reuse = "never"\n')
    bad = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "tls_session_reuse" in bad.stderr and "Traceback" not in bad.stderr
