"""An active data connection's fd, reused by another connection after the
transfer, must not be taken from that connection when the session that
made it moves on (pyftpdlib unregisters the old fd number)."""

from __future__ import annotations

import socket

from conftest import HOST, free_port, run_xxftpd


def _reply(f) -> bytes:
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    return line


def _session(port: int):
    sock = socket.create_connection((HOST, port), timeout=5)
    f = sock.makefile("rb")
    assert _reply(f).startswith(b"220")
    return sock, f


def _cmd(sock, f, line: str) -> bytes:
    sock.sendall(line.encode() + b"\r\n")
    return _reply(f)


def test_a_reused_fd_keeps_its_new_owner(tree):
    home = tree.user("alice")
    (home / "a.txt").write_text("a\n")
    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), wait_for_port=port)
    try:
        for _ in range(5):  # the fd numbers line up on the first try; a few more for good measure
            a, af = _session(port)
            assert _cmd(a, af, "USER alice").startswith(b"230")
            with socket.create_server((HOST, 0)) as listener:
                p = listener.getsockname()[1]
                assert _cmd(a, af, f"PORT 127,0,0,1,{p >> 8},{p & 255}").startswith(b"200")
                assert _cmd(a, af, "LIST").startswith((b"125", b"150"))
                data, _ = listener.accept()
                with data:
                    while data.recv(65536):
                        pass
            assert _reply(af).startswith(b"226")  # the server closed the data connection's fd
            c, cf = _session(port)  # its new control connection takes that fd number
            assert _cmd(a, af, "PASV").startswith(b"227")  # pyftpdlib closes the old connector here
            assert _cmd(c, cf, "NOOP").startswith(b"200"), "the new connection lost its registration"
            for s in (a, c):
                s.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
