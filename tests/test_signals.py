"""SIGTERM and SIGINT stop the loop between two events, never inside one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, signal, socket
    from pyftpdlib.ioloop import IOLoop
    from xxftp_pyftpdlib.signals import SignalWake, stop_on_signals

    stop_on_signals()
    loop = IOLoop()
    SignalWake(loop)

    class Closing:
        '''A connection whose close a signal lands in the middle of.'''

        def __init__(self):
            self.sock, self.peer = socket.socketpair()
            self.peer.send(b"x")
            self._fileno = self.sock.fileno()
            loop.register(self._fileno, self, loop.READ)

        def readable(self):
            return True

        def writable(self):
            return False

        def handle_read_event(self):
            loop.unregister(self._fileno)
            os.kill(os.getpid(), signal.SIGTERM)
            self._fileno = None  # a signal raised at once would leave this undone
            self.sock.close()
            print("closed whole", flush=True)

        def close(self):
            pass

    Closing()
    try:
        loop.loop()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    loop.close()  # sorts what is left by _fileno: fails on a half-closed one
    print("loop closed", flush=True)
""")


def test_a_signal_during_an_event_stops_the_loop_after_it():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:3] == ["closed whole", "stopped", "loop closed"], run.stdout + run.stderr
