"""An active data connection's fd, reused by another connection after the
transfer, must not be taken from that connection when the session that
made it moves on (pyftpdlib unregisters the old fd number)."""

from __future__ import annotations

import socket

from conftest import HOST, free_port, run_xxftpd
from test_hostile_protocol import Raw


def test_a_reused_fd_keeps_its_new_owner(tree):
    home = tree.user("alice")
    (home / "a.txt").write_text("a\n")
    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), wait_for_port=port)
    try:
        for _ in range(5):  # the fd numbers line up on the first try; a few more for good measure
            a = Raw(port, timeout=5)
            assert a.greeting.code == 220
            a.ok("USER alice", 230)
            with socket.create_server((HOST, 0)) as listener:
                p = listener.getsockname()[1]
                a.ok(f"PORT 127,0,0,1,{p >> 8},{p & 255}", 200)
                a.ok("LIST", 125, 150)
                data, _ = listener.accept()
                with data:
                    while data.recv(65536):
                        pass
            assert a.reply().code == 226  # the server closed the data connection's fd
            c = Raw(port, timeout=5)  # its new control connection takes that fd number
            assert c.greeting.code == 220
            a.ok("PASV", 227)  # pyftpdlib closes the old connector here
            noop = c.cmd("NOOP")
            assert noop is not None and noop.code == 200, "the new connection lost its registration"
            for raw in (a, c):
                raw.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
