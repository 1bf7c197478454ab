"""TLS client certificates over real sockets, with ftplib, curl and lftp
(certificates made here: a CA, client certificates it signed, one
self-signed, one expired); the ``.xxftp/certs`` rules alone are in
test_clientcerts.py."""

from __future__ import annotations

import datetime
import ftplib
import io
import logging
import os
import ssl
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import (HOST, ImplicitFTP_TLS, ResumingFTP_TLS, ServerThread, free_port, require_programs,
                      start_logged, stop_logged, wait_until)
from xxftp_pyftpdlib import certs
from xxftp_pyftpdlib.checks import check_tree
from xxftp_pyftpdlib.server import ConfigError, Options, make_handler

SECRET = b"CERT-SECRET " * 1000


class Material:
    """A CA, client certificates and keys written as PEM files under ``folder``."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = self._cert("xxftpd test CA", self.ca_key.public_key(), self.ca_key, ca=True,
                                  issuer="xxftpd test CA")
        self.ca = self._write("ca.pem", self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def _cert(self, name, public_key, signing_key, ca=False, issuer=None, days=(-1, 30)):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or "xxftpd test CA")])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(self.now + datetime.timedelta(days=days[0]))
                   .not_valid_after(self.now + datetime.timedelta(days=days[1]))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False,
                decipher_only=False), critical=True)
        return builder.sign(signing_key, hashes.SHA256())

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.folder, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def client(self, name: str, self_signed: bool = False, expired: bool = False) -> tuple[str, str, str]:
        """(cert path, key path, SHA-256 fingerprint as AB:CD:...)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._cert(name, key.public_key(), key if self_signed else self.ca_key,
                          issuer=name if self_signed else None, days=(-30, -1) if expired else (-1, 30))
        cert_path = self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
        key_path = self._write(f"{name}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex(":").upper()


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    m = Material(str(folder))
    m.server = certs.self_signed(str(folder / "server"))
    m.alice = m.client("alice")
    m.bob = m.client("bob")
    m.carol = m.client("carol")  # signed by the CA, listed nowhere
    m.rogue = m.client("rogue", self_signed=True)
    m.expired = m.client("expired", expired=True)
    return m


@pytest.fixture
def homes(tree, material):
    tree.user("alice", password="pw")
    tree.xxftp(tree.root / "alice", "certs", f"# alice's laptop\n{material.alice[2]}\n")
    tree.file("alice/secret.txt", SECRET)
    tree.user("bob", password="bobpw")
    tree.xxftp(tree.root / "bob", "certs", f"{material.bob[2].replace(':', '').lower()}\nand-password\n")
    tree.user("dave", password="davepw")  # no certs file
    return tree


@pytest.fixture
def serve(homes, material, start_options):
    def start(**fields) -> ServerThread:
        fields.setdefault("tls", True)
        return start_options(Options(root=str(homes.root), host=HOST, port=0, certfile=material.server[0],
                                     keyfile=material.server[1], tls_client_ca=material.ca, max_cons_per_ip=0,
                                     max_unauthenticated=0, max_unauthenticated_per_ip=0, login_timeout=0, **fields))

    return start


def tls_client(port: int, cert: tuple | None = None) -> ResumingFTP_TLS:
    """An explicit FTPS client past AUTH TLS, presenting ``cert``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # a failed client certificate shows in the handshake
    if cert is not None:
        context.load_cert_chain(cert[0], cert[1])
    ftp = ResumingFTP_TLS(context=context)
    ftp.connect(HOST, port, timeout=10)
    ftp.auth()
    return ftp


def test_a_listed_certificate_logs_in_at_user_with_232(serve, material, caplog):
    srv = serve()
    ftp = tls_client(srv.port, material.alice)
    assert ftp.sendcmd("USER alice").startswith("232")
    ftp.prot_p()
    out = io.BytesIO()
    ftp.retrbinary("RETR secret.txt", out.write)  # the data connection resumes: nothing asked again
    assert out.getvalue() == SECRET
    with pytest.raises(ftplib.error_perm, match="^503"):
        ftp.sendcmd("PASS whatever")  # logged in already
    ftp.quit()
    assert "did not resume" not in caplog.text
    ftp = tls_client(srv.port, material.alice)
    assert ftp.login("alice", "").startswith("232")  # ftplib's login stops at a 2xx to USER
    ftp.quit()


def test_the_password_alone_still_works_for_a_certificate_user(serve):
    srv = serve()
    ftp = tls_client(srv.port)
    assert ftp.login("alice", "pw").startswith("230")
    ftp.quit()


def test_a_certificate_of_alice_does_not_log_in_bob_nor_dave(serve, material):
    srv = serve()
    ftp = tls_client(srv.port, material.alice)
    assert ftp.sendcmd("USER bob").startswith("331")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS bobpw")  # bob needs his own listed certificate as well
    assert ftp.sendcmd("USER dave").startswith("331")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS wrong")
    assert ftp.login("dave", "davepw").startswith("230")  # no certs file: passwords as usual
    ftp.quit()


def test_an_unlisted_certificate_of_the_ca_gives_nothing_extra(serve, material):
    srv = serve()
    ftp = tls_client(srv.port, material.carol)
    assert ftp.sendcmd("USER alice").startswith("331")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS wrong")
    assert ftp.login("alice", "pw").startswith("230")
    ftp.quit()


@pytest.mark.parametrize("who", ["rogue", "expired"])
def test_a_certificate_that_does_not_verify_fails_the_handshake(serve, material, who, caplog):
    caplog.set_level(logging.INFO)
    srv = serve()
    with pytest.raises((ssl.SSLError, OSError)):
        ftp = tls_client(srv.port, getattr(material, who))
        ftp.sendcmd("USER alice")
    reason = "self-signed certificate (depth 0, CN='rogue')" if who == "rogue" else "certificate has expired"
    assert wait_until(lambda: "TLS handshake failed" in caplog.text, 5)  # logged by the server's thread
    lines = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0], caplog.text
    ftp = tls_client(srv.port)  # the server goes on
    assert ftp.login("alice", "pw").startswith("230")
    ftp.quit()


def test_and_password_needs_both(serve, material):
    srv = serve()
    ftp = tls_client(srv.port, material.bob)
    assert ftp.sendcmd("USER bob").startswith("331")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS wrong")
    assert ftp.login("bob", "bobpw").startswith("230")
    ftp.quit()
    for cert in (None, material.carol, material.alice):  # the right password without bob's certificate
        ftp = tls_client(srv.port, cert)
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.login("bob", "bobpw")
        ftp.close()
    plain = ftplib.FTP()
    plain.connect(HOST, srv.port, timeout=10)
    with pytest.raises(ftplib.error_perm, match="^530"):
        plain.login("bob", "bobpw")  # no TLS, no certificate
    plain.close()


def test_before_auth_tls_there_is_no_certificate(serve, material):
    srv = serve()
    ftp = ftplib.FTP()
    ftp.connect(HOST, srv.port, timeout=10)
    assert ftp.sendcmd("USER alice").startswith("331")
    ftp.close()


def test_an_untrusted_certs_file_lets_nobody_in(serve, homes, material, caplog):
    path = homes.root / "alice/.xxftp/certs"
    path.chmod(0o666)
    srv = serve()
    ftp = tls_client(srv.port, material.alice)
    assert ftp.sendcmd("USER alice").startswith("331")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS pw")
    ftp.close()
    assert "not trusted" in caplog.text


def test_an_edited_certs_file_counts_at_the_next_login(serve, homes, material):
    srv = serve()
    ftp = tls_client(srv.port, material.carol)
    assert ftp.sendcmd("USER alice").startswith("331")
    ftp.close()
    homes.xxftp(homes.root / "alice", "certs", material.carol[2] + "\n" + material.alice[2] + "\n")
    ftp = tls_client(srv.port, material.carol)
    assert ftp.sendcmd("USER alice").startswith("232")
    ftp.quit()


def test_implicit_tls_with_a_client_certificate(serve, material):
    srv = serve(tls=False, tls_implicit=True)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(material.alice[0], material.alice[1])
    ftp = ImplicitFTP_TLS(context=context)
    ftp.connect(HOST, srv.port, timeout=10)
    assert ftp.sendcmd("USER alice").startswith("232")
    out = io.BytesIO()
    ftp.retrbinary("RETR secret.txt", out.write)
    assert out.getvalue() == SECRET
    ftp.quit()


def test_curl_and_lftp_with_a_client_certificate(homes, material, tmp_path):
    require_programs("curl", "lftp")
    implicit = free_port()
    proc, port = start_logged(homes.root, "--tls", "--certfile", material.server[0], "--keyfile",
                              material.server[1], "--tls-client-ca", material.ca, "--implicit-port", str(implicit))
    try:
        base = ["curl", "-sS", "-k", "--cert", material.alice[0], "--key", material.alice[1]]
        for url in (f"ftp://{HOST}:{port}/", f"ftps://{HOST}:{implicit}/"):
            extra = ["--ssl-reqd"] if url.startswith("ftp:") else []
            listing = subprocess.run(base + extra + ["-u", "alice:", url], check=True, timeout=30,
                                     capture_output=True, text=True).stdout
            assert "secret.txt" in listing
        got = subprocess.run(base + ["-u", "alice:", f"ftps://{HOST}:{implicit}/secret.txt"], check=True,
                             timeout=30, capture_output=True).stdout
        assert got == SECRET
        refused = subprocess.run(["curl", "-sS", "-k", "--cert", material.rogue[0], "--key", material.rogue[1],
                                  "-u", "alice:pw", f"ftps://{HOST}:{implicit}/"], timeout=30, capture_output=True)
        assert refused.returncode != 0
        no_cert = subprocess.run(["curl", "-sS", "-k", "-u", "alice:", f"ftps://{HOST}:{implicit}/"],
                                 timeout=30, capture_output=True, text=True)
        assert no_cert.returncode != 0 and "530" in no_cert.stderr  # an empty password is no login
        for url in (f"ftp://{HOST}:{port}", f"ftps://{HOST}:{implicit}"):
            script = (f"set ssl:verify-certificate no; set ftp:ssl-force yes; set ssl:cert-file {material.alice[0]}; "
                      f"set ssl:key-file {material.alice[1]}; open -u alice, {url}; cls -1")
            done = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and "secret.txt" in done.stdout, done.stderr
    finally:
        log = stop_logged(proc)
    assert log.count("logged in by a client certificate") == 5 and "did not resume" not in log


def test_the_ca_flag_is_checked_at_start(homes, material, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for path, needle in ((str(tmp_path / "missing.pem"), "does not exist"), (str(garbage), "no PEM certificate")):
        with pytest.raises(ConfigError, match=needle):
            make_handler(Options(root=str(homes.root), tls=True, certfile=material.server[0],
                                 keyfile=material.server[1], tls_client_ca=path))
        proc = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(homes.root), "--port",
                               str(free_port()), "--tls", "--certfile", material.server[0], "--keyfile",
                               material.server[1], "--tls-client-ca", path], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 1 and needle in proc.stderr and proc.stderr.count("\n") == 1


def test_xxftpd_check_reports_bad_lines_with_file_and_line(homes, material):
    homes.xxftp(homes.root / "dave", "certs", f"# ok\n{material.alice[2]}\nnot-a-fingerprint\nand-password\n")
    findings = [str(f) for f in check_tree(str(homes.root))]
    path = homes.root / "dave/.xxftp/certs"
    assert any(f.startswith(f"{path}:3: not a SHA-256 fingerprint") for f in findings), findings
    assert not any("alice/.xxftp/certs" in f or "bob/.xxftp/certs" in f for f in findings), findings
    (homes.root / "alice/.xxftp/certs").chmod(0o666)
    findings = [str(f) for f in check_tree(str(homes.root))]
    assert any("alice/.xxftp/certs:0: not trusted" in f for f in findings), findings
    proc = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(homes.root), "check"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "dave/.xxftp/certs:3: not a SHA-256" in proc.stdout


def test_hosts_still_apply_to_a_certificate_login(serve, homes, material):
    homes.xxftp(homes.root / "alice", "hosts", "10.0.0.0/8\n")
    srv = serve()
    ftp = tls_client(srv.port, material.alice)
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("USER alice")
    assert ftp.sendcmd("NOOP").startswith("200")  # the session goes on, not logged in
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.nlst()
    ftp.close()


def test_and_password_on_a_home_without_password_needs_the_certificate(serve, homes, material):
    homes.user("erin")  # USER alone logs erin in ...
    homes.xxftp(homes.root / "erin", "certs", f"{material.carol[2]}\nand-password\n")  # ... with her certificate
    srv = serve()
    ftp = tls_client(srv.port, material.carol)
    assert ftp.sendcmd("USER erin").startswith("230")
    ftp.quit()
    for cert in (None, material.alice):
        ftp = tls_client(srv.port, cert)
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.sendcmd("USER erin")
        ftp.close()
