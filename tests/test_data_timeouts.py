"""--data-timeout and --passive-timeout on the real command: a stalled
transfer is aborted with 426 and the session goes on; an unused passive
port closes; both are TOML keys."""

from __future__ import annotations

import ftplib
import socket
import subprocess
import sys
import time

import pytest

from conftest import HOST, UploadInProgress, start_logged, stop_logged, temporaries


def client(port: int) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=20)
    ftp.login("alice", "pw")
    return ftp


def test_a_stalled_upload_is_aborted_and_the_session_goes_on(tree):
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root, "--data-timeout", "1")
    try:
        ftp = client(port)
        upload = UploadInProgress(ftp, "STOR stalled.bin")
        assert upload.send(b"x" * 1000)
        started = time.monotonic()
        ftp.sock.settimeout(10)
        reply = _reply(ftp)
        waited = time.monotonic() - started
        assert reply.startswith("426 Data connection timed out: no data for 1 s"), reply
        assert 0.9 < waited < 6, waited  # one to two check periods after the last byte (load aside)
        upload.conn.close()
        assert not (tree.root / "alice/stalled.bin").exists() and not temporaries(tree.root)
        assert ftp.voidcmd("NOOP").startswith("200")  # the session goes on
        upload = UploadInProgress(ftp, "STOR again.bin")  # and may transfer at once
        assert upload.finish(b"y" * 5000).startswith("226")
        assert (tree.root / "alice/again.bin").stat().st_size == 5000
        ftp.quit()
    finally:
        stop_logged(proc)


def _reply(ftp: ftplib.FTP) -> str:
    try:
        return ftp.getresp()
    except ftplib.Error as err:
        return str(err)


def test_a_stalled_download_is_aborted_and_the_session_goes_on(tree):
    tree.user("alice", password="pw")
    tree.file("alice/big.bin", b"z" * (64 * 1024 * 1024))
    proc, port = start_logged(tree.root, "--data-timeout", "1")
    try:
        ftp = client(port)
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR big.bin")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.recv(1000)  # then read nothing: the server's buffers fill and it stalls
        ftp.sock.settimeout(15)
        reply = _reply(ftp)
        assert reply.startswith("426 Data connection timed out"), reply
        conn.close()
        assert ftp.voidcmd("NOOP").startswith("200")
        ftp.quit()
    finally:
        stop_logged(proc)


def test_a_transfer_that_keeps_moving_is_not_cut(tree):
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root, "--data-timeout", "1")
    try:
        ftp = client(port)
        upload = UploadInProgress(ftp, "STOR slow.bin")
        for _ in range(8):  # 2.8 s in all, a little every 0.35 s
            assert upload.send(b"s" * 100)
            time.sleep(0.35)
        assert upload.finish().startswith("226")
        assert (tree.root / "alice/slow.bin").stat().st_size == 800
        ftp.quit()
    finally:
        stop_logged(proc)


def test_an_unused_passive_port_closes_at_the_passive_timeout(tree):
    tree.user("alice", password="pw")
    proc, port = start_logged(tree.root, "--passive-timeout", "1")
    try:
        ftp = client(port)
        host, data_port = ftp.makepasv()
        time.sleep(1.6)
        with pytest.raises(OSError):
            socket.create_connection((host, data_port), timeout=2).close()
        assert ftp.voidcmd("NOOP").startswith("200")  # nobody was answered unasked
        ftp.makepasv()
        started = time.monotonic()
        ftp.putcmd("LIST")  # a transfer command waiting for a connection that never comes
        reply = _reply(ftp)
        if reply.startswith("150"):  # pyftpdlib's "about to open"
            reply = _reply(ftp)
        assert reply.startswith("425 No data connection came within 1 s"), reply
        assert time.monotonic() - started < 3
        assert ftp.voidcmd("NOOP").startswith("200")
        ftp.quit()
    finally:
        stop_logged(proc)


def test_the_timeouts_are_toml_keys(tree, tmp_path):
    tree.user("alice", password="pw")
    config = tmp_path / "xxftpd.toml"
    config.write_text("data_timeout = 1\npassive_timeout = 1\n")
    proc, port = start_logged(tree.root, "--config", str(config))
    try:
        ftp = client(port)
        upload = UploadInProgress(ftp, "STOR stalled.bin")
        assert upload.send(b"x")
        ftp.sock.settimeout(10)
        assert _reply(ftp).startswith("426 Data connection timed out: no data for 1 s")
        upload.conn.close()
        ftp.quit()
    finally:
        stop_logged(proc)
    bad = tmp_path / "bad.toml"
    bad.write_text('data_timeout = "soon"\n')

    done = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(tree.root), "--config", str(bad)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "data_timeout" in done.stderr and "Traceback" not in done.stderr
