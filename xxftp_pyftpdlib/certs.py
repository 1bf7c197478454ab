"""TLS material: checking a certificate/key pair and a client CA file at
start, and making a self-signed certificate for testing (with ``cryptography``, pyOpenSSL's own base)."""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL


class CertificateError(Exception):
    """The certificate or key can't be used; one line for the user."""


def check_pair(certfile: str, keyfile: str | None) -> None:
    """Raise CertificateError unless the files are a usable matching pair."""
    keyfile = keyfile or certfile
    for label, path in (("certificate", certfile), ("key", keyfile)):
        if not os.path.isfile(path):
            raise CertificateError(f"{label} file {path!r} does not exist")
        if not os.access(path, os.R_OK):
            raise CertificateError(f"{label} file {path!r} is not readable")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        context.use_certificate_chain_file(certfile)
    except SSL.Error as err:
        raise CertificateError(f"{certfile!r} is not a usable certificate ({_reason(err)})") from None
    try:
        context.use_privatekey_file(keyfile)
    except SSL.Error as err:
        raise CertificateError(f"{keyfile!r} is not a usable private key ({_reason(err)})") from None
    try:
        context.check_privatekey()
    except SSL.Error as err:
        raise CertificateError(f"{keyfile!r} is not the key of {certfile!r} ({_reason(err)})") from None


def check_ca(cafile: str) -> None:
    """Raise CertificateError unless ``cafile`` holds PEM CA certificates
    OpenSSL can verify client certificates against."""
    if not os.path.isfile(cafile):
        raise CertificateError(f"CA file {cafile!r} does not exist")
    try:
        with open(cafile, "rb") as f:
            found = x509.load_pem_x509_certificates(f.read())
    except OSError as err:
        raise CertificateError(f"CA file {cafile!r} is not readable ({err.strerror})") from None
    except ValueError:
        raise CertificateError(f"CA file {cafile!r} holds no PEM certificate") from None
    if not found:
        raise CertificateError(f"CA file {cafile!r} holds no PEM certificate")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        context.load_verify_locations(cafile)
    except SSL.Error as err:
        raise CertificateError(f"CA file {cafile!r} is not usable ({_reason(err)})") from None


def _reason(err: SSL.Error) -> str:
    try:
        return err.args[0][0][2]
    except (IndexError, TypeError):
        return str(err) or "unknown error"


def self_signed(out_dir: str, common_name: str = "localhost", days: int = 365) -> tuple[str, str]:
    """Write ``cert.pem`` and ``key.pem`` (mode 0600) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = x509.SubjectAlternativeName([
        x509.DNSName(common_name), x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(alt, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(out_dir, "cert.pem"), os.path.join(out_dir, "key.pem")
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)
