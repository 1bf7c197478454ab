"""LoopWake: calls from other threads wake an IO loop at once, and the
waker leaves the loop when no call is expected any more."""

from __future__ import annotations

import threading
import time

from xxftp_pyftpdlib.loopwake import LoopWake
from xxftp_pyftpdlib.server import SafeIOLoop


def test_a_call_from_another_thread_wakes_a_blocked_loop_at_once():
    loop = SafeIOLoop()
    try:
        ran: list[tuple[str, int]] = []
        wake = LoopWake.expect(loop)
        assert list(loop.socket_map.values()) == [wake]
        caller = threading.Timer(0.2, wake.call, args=(lambda: ran.append((threading.current_thread().name, 1)),))
        caller.start()
        t0 = time.monotonic()
        loop.poll(10)  # blocks until an event: the call's
        waited = time.monotonic() - t0
        caller.join()
        assert ran == [(threading.current_thread().name, 1)]  # on the loop's thread
        assert waited < 5, waited
        assert loop.socket_map == {}  # the one expected call ran: nothing keeps the loop alive
    finally:
        loop.close()


def test_one_waker_per_loop_until_every_expected_call_ran():
    loop = SafeIOLoop()
    try:
        first, second = LoopWake.expect(loop), LoopWake.expect(loop)
        assert first is second and len(loop.socket_map) == 1
        ran = []
        threads = [threading.Thread(target=first.call, args=(ran.append, n)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while len(ran) < 2:
            loop.poll(5)
        assert sorted(ran) == [0, 1] and loop.socket_map == {}
        assert LoopWake.expect(loop) is not first  # a new one once the old left
    finally:
        loop.close()


def test_a_failing_call_does_not_stop_the_others():
    loop = SafeIOLoop()
    try:
        wake = LoopWake.expect(loop)
        LoopWake.expect(loop)
        ran = []
        wake.call(lambda: 1 / 0)
        wake.call(ran.append, "second")
        loop.poll(5)
        assert ran == ["second"] and loop.socket_map == {}
    finally:
        loop.close()


def test_calls_after_the_loop_closed_are_dropped():
    loop = SafeIOLoop()
    wake = LoopWake.expect(loop)
    loop.close()  # a server shutting down while a check still runs
    assert wake.fileno() is None and LoopWake._wakers.get(id(loop)) is None
    ran = []
    wake.call(ran.append, 1)  # the check ends afterwards: nothing happens, nothing is written
    assert ran == []
