"""FTPS over real sockets: ftplib.FTP_TLS, curl and lftp."""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest

from conftest import HOST, ResumingFTP_TLS, free_port, run_xxftpd, temporaries
from xxftp_pyftpdlib import certs
from xxftp_pyftpdlib.server import ConfigError, Options, make_handler

KiB = 1024


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return certs.self_signed(str(tmp_path_factory.mktemp("tls")))


def tls_client(port, user="alice", password="pw"):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ftp = ResumingFTP_TLS(context=context)
    ftp.connect(HOST, port, timeout=10)
    ftp.login(user, password)
    ftp.prot_p()
    return ftp


@pytest.fixture
def tls_server(tree, pair, start_server):
    tree.user("alice", password="pw", size="64K", virtual="ro $root/ro-target read\n")
    tree.file("ro-target/doc.txt", b"doc")
    cert, key = pair

    def start(**attrs):
        from xxftp_pyftpdlib import XxftpTLSHandler
        return start_server(tree.root, handler_base=XxftpTLSHandler, certfile=cert, keyfile=key,
                            ssl_context=None, **attrs)
    return start


def test_auth_tls_prot_p_list_retr_stor_and_quota(tree, tls_server):
    ftp = tls_client(tls_server().port)
    assert isinstance(ftp.sock, ssl.SSLSocket)
    data = os.urandom(40 * KiB)
    ftp.storbinary("STOR a.bin", io.BytesIO(data))
    out = io.BytesIO()
    ftp.retrbinary("RETR a.bin", out.write)
    assert out.getvalue() == data
    assert "a.bin" in ftp.nlst() and any(line.endswith(" ro") for line in _lines(ftp, "LIST"))
    # quota holds over TLS: the server cuts the data connection and answers 552
    conn = ftp.transfercmd("STOR b.bin")
    try:
        conn.sendall(os.urandom(40 * KiB))
        conn.unwrap()
    except OSError:
        pass
    conn.close()
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.voidresp()
    assert not (tree.root / "alice/b.bin").exists()
    with pytest.raises(ftplib.error_perm, match="'write'"):
        ftp.storbinary("STOR ro/x.txt", io.BytesIO(b"x"))  # permissions too
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.retrbinary("RETR .xxftp/password", lambda b: None)
    ftp.quit()


def _lines(ftp, cmd):
    lines = []
    ftp.retrlines(cmd, lines.append)
    return lines


def test_required_tls_refuses_plain_login_and_data(tree, tls_server):
    srv = tls_server(tls_control_required=True, tls_data_required=True)
    plain = ftplib.FTP()
    plain.connect(HOST, srv.port, timeout=10)
    with pytest.raises(ftplib.error_perm, match="^550 SSL/TLS required"):
        plain.login("alice", "pw")
    plain.close()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    ftp = ResumingFTP_TLS(context=context)
    ftp.connect(HOST, srv.port, timeout=10)
    ftp.login("alice", "pw")
    with pytest.raises(ftplib.error_perm, match="^550 SSL/TLS required on the data channel"):
        ftp.nlst()  # PROT C data refused
    ftp.prot_p()
    assert "ro" in ftp.nlst()


@pytest.mark.parametrize("certfile, keyfile, needle", [
    ("missing.pem", None, "does not exist"),
    ("GARBAGE", None, "not a usable certificate"),
    ("CERT", "OTHERKEY", "not a usable private key"),
])
def test_bad_certificates_are_one_clear_error(tree, pair, tmp_path, certfile, keyfile, needle):
    tree.user("alice")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    other = certs.self_signed(str(tmp_path / "other"))[1]
    names = {"GARBAGE": str(garbage), "CERT": pair[0], "OTHERKEY": other, None: None}
    certfile = names.get(certfile, str(tmp_path / certfile))
    options = Options(root=str(tree.root), tls=True, certfile=certfile, keyfile=names[keyfile])
    with pytest.raises(ConfigError, match=needle):
        make_handler(options)
    port = free_port()
    cmd = ["--root", str(tree.root), "--port", str(port), "--tls", "--certfile", certfile]
    if keyfile:
        cmd += ["--keyfile", names[keyfile]]
    proc = run_xxftpd(*cmd)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode != 0
    assert err.strip().count("\n") == 0 and err.startswith("xxftpd: error:") and needle in err
    assert "Traceback" not in err


def test_curl_and_lftp_over_ftps(tree, pair, tmp_path):
    for tool in ("curl", "lftp"):
        assert shutil.which(tool), f"{tool} is needed (installed by tests/debian-packages.sh)"
    tree.user("alice", password="pw", size="10M")
    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), "--tls",
                      "--certfile", pair[0], "--keyfile", pair[1], "--tls-control-required",
                      "--tls-data-required", wait_for_port=port)
    try:
        src = tmp_path / "up.bin"
        src.write_bytes(os.urandom(300 * KiB))
        url = f"ftp://{HOST}:{port}/"
        subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:pw", "-T", str(src), url + "curl.bin"],
                       check=True, timeout=30)
        listing = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:pw", url],
                                 check=True, timeout=30, capture_output=True, text=True).stdout
        assert "curl.bin" in listing
        got = tmp_path / "down.bin"
        subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:pw", "-o", str(got), url + "curl.bin"],
                       check=True, timeout=30)
        assert got.read_bytes() == src.read_bytes()
        script = (f"set ssl:verify-certificate no; set ftp:ssl-force yes; set ftp:ssl-protect-data yes; "
                  f"open -u alice,pw ftp://{HOST}:{port}; put {src} -o lftp.bin; "
                  f"get lftp.bin -o {tmp_path / 'lftp-down.bin'}; cls -1")
        done = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "lftp.bin" in done.stdout
        assert (tmp_path / "lftp-down.bin").read_bytes() == src.read_bytes()
        assert (tree.root / "alice/lftp.bin").read_bytes() == src.read_bytes()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


# --- the TLS data path: records moved in batches


MiB = 1024 * KiB


@pytest.fixture
def roomy(tree, tls_server):
    """A TLS server whose alice has room for large transfers."""
    srv = tls_server()
    tree.user("alice", password="pw", size="100M")
    return srv


def test_large_tls_transfers_arrive_whole_both_ways(tree, roomy):
    home = tree.root / "alice"
    data = os.urandom(8 * MiB + 12345)  # many records per read event, and a short last one
    ftp = tls_client(roomy.port)
    ftp.storbinary("STOR big.bin", io.BytesIO(data), blocksize=256 * KiB)  # TYPE I  # ends with close_notify
    assert (home / "big.bin").read_bytes() == data
    out = io.BytesIO()
    ftp.retrbinary("RETR big.bin", out.write)
    assert out.getvalue() == data
    # a client that closes without close_notify still ends its upload
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR plain-close.bin")
    conn.sendall(data[:3 * MiB])
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert (home / "plain-close.bin").read_bytes() == data[:3 * MiB]
    assert ftp.sendcmd("SIZE big.bin") == f"213 {len(data)}"
    assert not temporaries(home)
    ftp.quit()


def test_tls_download_to_a_slow_reader_and_from_an_offset(tree, roomy):
    """The socket fills up (the TLS write must be retried with what is
    left), and REST starts the file where it says."""
    data = os.urandom(4 * MiB)
    (tree.root / "alice/slow.bin").write_bytes(data)
    ftp = tls_client(roomy.port)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR slow.bin")
    got = bytearray()
    while True:
        piece = conn.recv(4096 if len(got) < MiB else 256 * KiB)
        if not piece:
            break
        got += piece
        if len(got) < MiB and len(got) % (64 * KiB) < 4096:
            time.sleep(0.02)  # let the server's writes meet a full socket
    conn.unwrap()
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert bytes(got) == data
    out = io.BytesIO()
    ftp.retrbinary("RETR slow.bin", out.write, rest=MiB + 7)
    assert out.getvalue() == data[MiB + 7:]
    ftp.quit()


def test_tls_ascii_mode_converts_line_ends(tree, tls_server):
    tree.user("alice", password="pw", size="100M")
    (tree.root / "alice/unix.txt").write_bytes(b"one\ntwo\n" * 1000)
    ftp = tls_client(tls_server(ascii_mangling=True).port)
    lines = []
    ftp.retrlines("RETR unix.txt", lines.append)
    assert lines == ["one", "two"] * 1000
    ftp.storlines("STOR dos.txt", io.BytesIO(b"a\r\nb\r\n" * 1000))
    assert (tree.root / "alice/dos.txt").read_bytes() == b"a\nb\n" * 1000
    ftp.quit()


def test_tls_ascii_mode_moves_bytes_as_they_are_by_default(tree, roomy):
    data = b"one\r\ntwo\n\r\x00" * 1000
    (tree.root / "alice/mixed.bin").write_bytes(data)
    ftp = tls_client(roomy.port)
    ftp.voidcmd("TYPE A")
    out = io.BytesIO()
    with ftp.transfercmd("RETR mixed.bin") as conn:
        while chunk := conn.recv(65536):
            out.write(chunk)
        conn.unwrap()
    ftp.voidresp()
    assert out.getvalue() == data
    ftp.storlines("STOR dos.txt", io.BytesIO(b"a\r\nb\r\n" * 1000))  # ftplib sends TYPE A, CRLF lines
    assert (tree.root / "alice/dos.txt").read_bytes() == b"a\r\nb\r\n" * 1000
    ftp.quit()


def test_clear_data_on_a_tls_session(tree, roomy):
    """PROT C: the data connection is plain TCP and takes the clear path."""
    data = os.urandom(2 * MiB + 1)
    ftp = tls_client(roomy.port)
    ftp.prot_c()
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR clear.bin")
    assert not isinstance(conn, ssl.SSLSocket)
    conn.sendall(data)
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert (tree.root / "alice/clear.bin").read_bytes() == data
    out = io.BytesIO()
    ftp.retrbinary("RETR clear.bin", out.write)
    assert out.getvalue() == data
    ftp.quit()


def test_tls_upload_reset_is_not_committed_and_the_session_goes_on(tree, roomy):
    home = tree.root / "alice"
    (home / "victim.bin").write_bytes(b"old")
    ftp = tls_client(roomy.port)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR victim.bin")
    conn.sendall(os.urandom(MiB))
    time.sleep(0.3)  # the server has read it
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # a reset, no close_notify
    with pytest.raises(ftplib.error_temp, match="^426"):
        ftp.voidresp()
    assert (home / "victim.bin").read_bytes() == b"old"
    assert not temporaries(home)
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()


def test_tls_download_cut_by_the_client_is_426_and_the_session_goes_on(tree, roomy):
    (tree.root / "alice/long.bin").write_bytes(os.urandom(16 * MiB))
    ftp = tls_client(roomy.port)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR long.bin")
    assert len(conn.recv(64 * KiB)) > 0
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    with pytest.raises(ftplib.error_temp, match="^426"):
        ftp.voidresp()
    out = io.BytesIO()
    ftp.retrbinary("RETR long.bin", out.write)
    assert len(out.getvalue()) == 16 * MiB
    ftp.quit()


def test_garbage_inside_a_tls_upload_is_an_abort_and_the_session_goes_on(tree, roomy):
    """Bytes that are not TLS records, mid-upload: the upload is refused and
    rolled back, nothing is committed, the control connection carries on."""
    home = tree.root / "alice"
    (home / "victim.bin").write_bytes(b"old")
    ftp = tls_client(roomy.port)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR victim.bin")
    conn.sendall(os.urandom(256 * KiB))
    raw = socket.socket(fileno=os.dup(conn.fileno()))  # under the TLS layer
    raw.sendall(b"\x17\x03\x03\x40\x00" + os.urandom(16 * KiB))  # an application-data record no key made
    raw.close()
    try:
        reply = ftp.voidresp()
    except ftplib.all_errors as err:
        reply = str(err)
    conn.close()
    assert reply[:1] == "4", f"a corrupt TLS upload was answered {reply!r}"
    assert (home / "victim.bin").read_bytes() == b"old"
    assert not temporaries(home)
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()
