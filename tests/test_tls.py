"""FTPS over real sockets: ftplib.FTP_TLS, curl and lftp."""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import ssl
import subprocess

import pytest

from conftest import HOST, free_port, run_xxftpd
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
    ftp = ftplib.FTP_TLS(context=context)
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
    ftp = ftplib.FTP_TLS(context=context)
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
        assert shutil.which(tool), f"{tool} is needed (installed by .ci/run)"
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
