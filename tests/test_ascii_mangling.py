"""--ascii-mangling: off (the default), a file moves byte for byte in TYPE A
too; on, TYPE A converts line ends as RFC 959 says (CRLF on the wire, LF on
the disk)."""

from __future__ import annotations

import ftplib
import io
import shutil
import subprocess

import pytest

from conftest import HOST, start_logged, stop_logged

DATA = b"line one\r\nline two\nbinary \r\r\n\x00\xff\r\n" * 1000


def stor_ascii(ftp: ftplib.FTP, path: str, data: bytes) -> str:
    ftp.voidcmd("TYPE A")
    with ftp.transfercmd(f"STOR {path}") as conn:
        conn.sendall(data)
    return ftp.voidresp()


def retr_ascii(ftp: ftplib.FTP, path: str) -> bytes:
    ftp.voidcmd("TYPE A")
    out = io.BytesIO()
    with ftp.transfercmd(f"RETR {path}") as conn:
        while chunk := conn.recv(65536):
            out.write(chunk)
    ftp.voidresp()
    return out.getvalue()


@pytest.mark.parametrize("mode", ["atomic", "standard"])
def test_type_a_moves_bytes_as_they_are_by_default(tree, start_server, connect, mode):
    tree.user("alice", size="10M")
    tree.file("alice/unix.txt", b"a\nb\nc\n" * 1000)
    ftp = connect(start_server(tree.root, upload_mode=mode).port, "alice")
    assert stor_ascii(ftp, "up.bin", DATA).startswith("226")
    assert (tree.root / "alice/up.bin").read_bytes() == DATA
    assert retr_ascii(ftp, "unix.txt") == b"a\nb\nc\n" * 1000
    assert retr_ascii(ftp, "up.bin") == DATA
    assert f"{10 * 1024 * 1024 - 6000 - len(DATA)} bytes free" in ftp.sendcmd("SITE QUOTA")  # charged as stored


def test_type_a_converts_line_ends_when_on(tree, start_server, connect):
    tree.user("alice")
    tree.file("alice/unix.txt", b"a\nb\r\nc\n")
    ftp = connect(start_server(tree.root, ascii_mangling=True).port, "alice")
    assert stor_ascii(ftp, "up.txt", b"one\r\ntwo\r\n").startswith("226")
    assert (tree.root / "alice/up.txt").read_bytes() == b"one\ntwo\n"
    assert retr_ascii(ftp, "unix.txt") == b"a\r\nb\r\nc\r\n"
    ftp.voidcmd("TYPE I")
    out = io.BytesIO()
    ftp.retrbinary("RETR unix.txt", out.write)
    assert out.getvalue() == b"a\nb\r\nc\n"  # TYPE I is never converted


def test_curl_ascii_upload_on_the_real_command(tree, tmp_path):
    assert shutil.which("curl"), "curl is needed (installed by tests/debian-packages.sh)"
    tree.user("alice", password="pw")
    src = tmp_path / "unix.txt"
    src.write_bytes(b"unix\nline\n")  # curl itself sends it as CRLF lines in TYPE A
    for flag, expected in (((), b"unix\r\nline\r\n"), (("--ascii-mangling", "on"), b"unix\nline\n")):
        proc, port = start_logged(tree.root, *flag)
        try:
            done = subprocess.run(["curl", "-sS", "--use-ascii", "-T", str(src), "-u", "alice:pw",
                                   f"ftp://{HOST}:{port}/got.txt"], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
        finally:
            stop_logged(proc)
        assert (tree.root / "alice/got.txt").read_bytes() == expected, flag
