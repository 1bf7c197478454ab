"""``xxftpd cert --self-signed``: never replaces a pair without --force, and
names each host once in the certificate."""

from __future__ import annotations

import subprocess
import sys

from cryptography import x509


def cert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "cert", "--self-signed", *args],
                          capture_output=True, text=True, timeout=60)


def alt_names(path) -> list[str]:
    c = x509.load_pem_x509_certificate(path.read_bytes())
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


def test_existing_files_are_kept_without_force(tmp_path):
    out = tmp_path / "tls"
    first = cert("--out", str(out))
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = cert("--out", str(out))
    assert again.returncode == 1
    assert again.stderr == (f"xxftpd: error: {out}/cert.pem and {out}/key.pem already exist; "
                            "nothing written (--force replaces them)\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "cert.pem").unlink()  # one of the two is enough to refuse
    assert cert("--out", str(out)).returncode == 1 and (out / "key.pem").read_bytes() == before["key.pem"]
    forced = cert("--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "key.pem").read_bytes() != before["key.pem"] and (out / "key.pem").stat().st_mode & 0o777 == 0o600


def test_alt_names_are_listed_once(tmp_path):
    assert cert("--out", str(tmp_path / "a")).returncode == 0
    assert alt_names(tmp_path / "a/cert.pem") == ["localhost", "127.0.0.1", "::1"]
    assert cert("--out", str(tmp_path / "b"), "--name", "ftp.example.org").returncode == 0
    assert alt_names(tmp_path / "b/cert.pem") == ["ftp.example.org", "localhost", "127.0.0.1", "::1"]
    assert cert("--out", str(tmp_path / "c"), "--name", "192.0.2.7").returncode == 0
    assert alt_names(tmp_path / "c/cert.pem") == ["192.0.2.7", "localhost", "127.0.0.1", "::1"]
