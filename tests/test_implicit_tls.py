"""Implicit FTPS over real sockets: TLS from the first byte on its own port,
alone (--tls-implicit) or beside explicit FTPS (--tls --implicit-port),
with ftplib, curl's and lftp's ftps:// URLs."""

from __future__ import annotations

import ftplib
import io
import logging
import os
import socket
import ssl
import subprocess
import sys
import time

import pytest

from conftest import (HOST, ImplicitFTP_TLS, ResumingFTP_TLS, ServerThread, free_port, require_programs,
                      start_logged, stop_logged, wait_until)
from xxftp_pyftpdlib import certs
from xxftp_pyftpdlib.server import ConfigError, Options, make_server

SECRET = b"IMPLICIT-SECRET " * 4096


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def implicit_login(port: int, user: str = "alice", password: str = "pw") -> ImplicitFTP_TLS:
    ftp = ImplicitFTP_TLS(context=client_context())
    ftp.connect(HOST, port, timeout=10)
    ftp.login(user, password)
    return ftp


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return certs.self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def homes(tree):
    tree.user("alice", password="pw", size="10M")
    tree.user("bob", password="pw")
    tree.file("alice/secret.txt", SECRET)
    return tree


@pytest.fixture
def serve(homes, pair, start_options):
    """serve(**options) -> the running server (``.port``; ``.implicit_port``)."""

    def start(**fields) -> ServerThread:
        fields.setdefault("tls_implicit", not fields.get("tls"))
        thread = start_options(Options(root=str(homes.root), host=HOST, port=0, certfile=pair[0], keyfile=pair[1],
                                       max_cons_per_ip=0, max_unauthenticated=0, max_unauthenticated_per_ip=0,
                                       login_timeout=0, **fields))
        extra = getattr(thread.server, "extra_listeners", [])
        thread.implicit_port = extra[0].address[1] if extra else thread.server.address[1]
        return thread

    return start


def test_ftplib_implicit_lists_uploads_and_downloads_with_prot_p_implied(serve, homes, caplog):
    srv = serve()
    ftp = implicit_login(srv.port)
    assert isinstance(ftp.sock, ssl.SSLSocket)
    assert ftp.welcome.startswith("220")
    data = os.urandom(300 * 1024)
    ftp.storbinary("STOR up.bin", io.BytesIO(data))  # no PBSZ/PROT sent: protected anyway
    assert (homes.root / "alice/up.bin").read_bytes() == data
    out = io.BytesIO()
    ftp.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == SECRET
    assert sorted(ftp.nlst()) == ["secret.txt", "up.bin"]
    ftp.quit()
    assert "did not resume" not in caplog.text


def test_a_data_connection_in_the_clear_is_refused_on_an_implicit_port(serve):
    """PROT P is implied: a client that does not protect its data
    connection fails the TLS handshake there, never gets the file."""
    srv = serve()
    ftp = implicit_login(srv.port)
    ftp._prot_p = False  # the client thinks data is clear; the server does not
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR secret.txt")
    conn.settimeout(1)
    got = b""
    try:
        while chunk := conn.recv(65536):
            got += chunk
    except OSError:
        pass
    conn.close()
    assert SECRET[:64] not in got


def test_auth_pbsz_prot_ccc_and_rein_answer_sensibly(serve):
    srv = serve()
    ftp = implicit_login(srv.port)
    with pytest.raises(ftplib.error_perm, match="^503"):
        ftp.sendcmd("AUTH TLS")  # TLS is on already
    assert ftp.sendcmd("PBSZ 0").startswith("200")
    with pytest.raises(ftplib.error_perm, match="^534"):
        ftp.sendcmd("CCC")
    assert ftp.sendcmd("PROT C").startswith("200")  # clear data, asked for, allowed here
    ftp._prot_p = False
    assert "secret.txt" in ftp.nlst()
    assert ftp.sendcmd("PROT P").startswith("200")
    ftp._prot_p = True
    assert ftp.sendcmd("REIN").startswith("2")
    ftp.login("alice", "pw")  # after REIN: protected again without PROT P
    out = io.BytesIO()
    ftp.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == SECRET
    ftp.quit()


def test_prot_c_is_refused_on_an_implicit_port_when_data_must_be_protected(serve):
    srv = serve(tls_data_required=True)
    ftp = implicit_login(srv.port)
    with pytest.raises(ftplib.error_perm, match="^534"):
        ftp.sendcmd("PROT C")
    assert "secret.txt" in ftp.nlst()
    ftp.quit()


def test_explicit_and_implicit_ports_of_one_server(serve, homes):
    srv = serve(tls=True, implicit_port=0)
    assert srv.implicit_port != srv.port
    explicit = ResumingFTP_TLS(context=client_context())
    explicit.connect(HOST, srv.port, timeout=10)
    assert explicit.welcome.startswith("220")  # in the clear, before AUTH TLS
    explicit.login("alice", "pw")
    explicit.prot_p()
    implicit = implicit_login(srv.implicit_port, "bob")
    implicit.storbinary("STOR from-implicit.txt", io.BytesIO(b"hello"))
    explicit.storbinary("STOR from-explicit.txt", io.BytesIO(b"hi"))
    assert (homes.root / "bob/from-implicit.txt").read_bytes() == b"hello"
    assert (homes.root / "alice/from-explicit.txt").read_bytes() == b"hi"
    # a plain client on the explicit port still works; on the implicit one it gets nothing
    plain = ftplib.FTP()
    plain.connect(HOST, srv.port, timeout=10)
    plain.login("bob", "pw")
    assert "from-implicit.txt" in plain.nlst()
    plain.quit()
    explicit.quit()
    implicit.quit()


def test_a_clear_client_on_the_implicit_port_gets_no_reply_and_one_log_line(serve, caplog):
    srv = serve()
    caplog.set_level(logging.INFO)
    with socket.create_connection((HOST, srv.port), timeout=5) as sock:
        sock.sendall(b"USER alice\r\n")
        got = b""
        try:
            while chunk := sock.recv(1024):
                got += chunk
        except OSError:
            pass
    assert b"220" not in got and b"331" not in got
    assert wait_until(lambda: "TLS handshake failed" in caplog.text, 5)
    lines = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(lines) == 1 and "closing" in lines[0], lines
    assert wait_until(lambda: not srv.server.ip_map, 5)
    assert "Traceback" not in caplog.text


def test_refused_connections_on_the_implicit_port_get_no_clear_text(serve, caplog):
    caplog.set_level(logging.INFO)
    srv = serve(deny_from=["127.0.0.0/8"])
    with socket.create_connection((HOST, srv.port), timeout=5) as sock:
        got = sock.recv(1024)
    assert got == b""  # closed: no "421" in clear text where TLS is expected
    assert wait_until(lambda: "connection refused" in caplog.text, 5)


@pytest.mark.parametrize("model, drip", [("async", False), ("async", True), ("multi-thread", False),
                                         ("multi-proc", False)])
def test_a_stalled_implicit_handshake_is_closed_at_the_login_timeout_with_one_line(homes, pair, model, drip):
    proc, port = start_logged(homes.root, "--tls", "--certfile", pair[0], "--keyfile", pair[1],
                              "--implicit-port", str(implicit := free_port()), "--login-timeout", "2",
                              "--timeout", "60", "--concurrency", model)
    try:
        assert wait_until(lambda: _listens(implicit), 10)
        ftp = implicit_login(implicit)  # this serving model serves the implicit port
        assert "secret.txt" in ftp.nlst()
        ftp.quit()
        sock = socket.create_connection((HOST, implicit), timeout=0.5)
        mine = f"{HOST}:{sock.getsockname()[1]}-[] "
        hello = bytes.fromhex("160301")  # the start of a ClientHello
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 10:
            try:
                if drip and hello:
                    sock.send(hello[:1])
                    hello = hello[1:]
                closed = sock.recv(1) == b""
            except socket.timeout:
                pass
            except OSError:
                closed = True
        elapsed = time.monotonic() - started
        sock.close()
        assert closed and 1.5 < elapsed < 4.5, elapsed
        time.sleep(0.3)
    finally:
        log = stop_logged(proc)
    lines = [line.split(mine, 1)[1] for line in log.splitlines() if mine in line]
    # (with multi-proc the accepting parent logs a close of its own)
    assert [line for line in lines if not line.startswith("FTP session ")] == ["closing: Login timed out."], lines


def test_a_stalled_handshake_without_login_timeout_ends_at_the_idle_timeout(homes, pair, caplog):
    caplog.set_level(logging.INFO)
    options = Options(root=str(homes.root), host=HOST, port=0, tls_implicit=True, certfile=pair[0],
                      keyfile=pair[1], login_timeout=0, timeout=1)
    thread = ServerThread(make_server(options))
    thread.start()
    try:
        with socket.create_connection((HOST, thread.port), timeout=5) as sock:
            started = time.monotonic()
            assert sock.recv(1) == b""
            assert time.monotonic() - started < 4
        assert wait_until(lambda: "no TLS handshake within 1 s" in caplog.text, 5)
        assert "SSL handshake timeout" not in caplog.text
    finally:
        thread.stop()


def test_admission_limits_count_both_ports(homes, pair):
    """One table for the server: strangers on the implicit port displace
    each other, and a full server refuses on either port."""
    options = Options(root=str(homes.root), host=HOST, port=0, tls=True, implicit_port=0, certfile=pair[0],
                      keyfile=pair[1], max_cons=2, max_cons_per_ip=0, max_unauthenticated=1,
                      max_unauthenticated_per_ip=0, login_timeout=0)
    thread = ServerThread(make_server(options))
    thread.start()
    implicit_port = thread.server.extra_listeners[0].address[1]
    try:
        first = ImplicitFTP_TLS(context=client_context())
        first.connect(HOST, implicit_port, timeout=10)  # a stranger (handshake done, not logged in)
        second = implicit_login(implicit_port)  # displaces it, then logs in
        with pytest.raises((EOFError, OSError, ftplib.Error)):
            first.sendcmd("NOOP")
            first.sendcmd("NOOP")
        third = ftplib.FTP()
        third.connect(HOST, thread.port, timeout=10)
        third.login("bob", "pw")  # on the explicit port: the second place
        with socket.create_connection((HOST, implicit_port), timeout=5) as sock:
            assert sock.recv(1024) == b""  # both places hold logged-in sessions: refused, no clear text
        fourth = ftplib.FTP()
        with pytest.raises(ftplib.error_temp, match="^421"):
            fourth.connect(HOST, thread.port, timeout=10)
        second.quit()
        third.quit()
    finally:
        thread.stop()


def test_curl_and_lftp_ftps_urls_with_workers_resume_the_session(homes, pair, tmp_path):
    require_programs("curl", "lftp")
    implicit = free_port()
    proc, port = start_logged(homes.root, "--tls", "--certfile", pair[0], "--keyfile", pair[1],
                              "--implicit-port", str(implicit), "--tls-session-reuse", "required",
                              "--tls-data-required", "--workers", "2", "--log-level", "debug")
    try:
        wait_until(lambda: _listens(implicit), 10)
        url = f"ftps://{HOST}:{implicit}/"
        src = tmp_path / "up.bin"
        src.write_bytes(os.urandom(200 * 1024))
        curl = ["curl", "-sS", "--cacert", pair[0], "-u", "alice:pw"]
        subprocess.run(curl + ["-T", str(src), url + "c.bin"], check=True, timeout=30)
        listing = subprocess.run(curl + [url], check=True, timeout=30, capture_output=True, text=True).stdout
        assert "c.bin" in listing and "secret.txt" in listing
        got = subprocess.run(curl + [url + "secret.txt"], check=True, timeout=30, capture_output=True).stdout
        assert got == SECRET
        script = (f"set ssl:verify-certificate no; open -u alice,pw {url}; put {src} -o l.bin; "
                  f"get secret.txt -o {tmp_path / 'l-secret'}; cls -1")
        done = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "l.bin" in done.stdout and "c.bin" in done.stdout
        assert (tmp_path / "l-secret").read_bytes() == SECRET
        for name in ("c.bin", "l.bin"):
            assert (homes.root / "alice" / name).read_bytes() == src.read_bytes()
    finally:
        log = stop_logged(proc)
    assert "did not resume" not in log
    assert "<- AUTH" not in log  # TLS from the first byte: nobody had to ask
    assert log.count("STOR /c.bin ok") == 1 and log.count("STOR /l.bin ok") == 1


def _listens(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("flags, needle", [
    (["--tls", "--tls-implicit"], "exclude each other"),
    (["--implicit-port", "9990"], "needs --tls"),
    (["--tls-implicit"], "--tls-implicit needs --certfile"),
    (["--tls-client-ca", "ca.pem"], "needs --tls or --tls-implicit"),
])
def test_how_the_flags_combine(homes, flags, needle):
    proc = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(homes.root), "--port",
                           str(free_port()), *flags], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_busy_implicit_port_is_one_clear_error(homes, pair):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on {HOST}:{taken}"):
            make_server(Options(root=str(homes.root), host=HOST, port=0, tls=True, implicit_port=taken,
                                certfile=pair[0], keyfile=pair[1]))


def test_implicit_keys_in_a_config_file(homes, pair, tmp_path):
    implicit = free_port()
    config = tmp_path / "x.toml"
    config.write_text(f'tls = true\ncertfile = "{pair[0]}"\nkeyfile = "{pair[1]}"\nimplicit_port = {implicit}\n')
    proc, port = start_logged(homes.root, "--config", str(config))
    try:
        assert wait_until(lambda: _listens(implicit), 10)
        ftp = implicit_login(implicit)
        assert "secret.txt" in ftp.nlst()
        ftp.quit()
    finally:
        log = stop_logged(proc)
    assert f"{implicit} (implicit TLS)" in log
