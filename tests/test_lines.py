"""The command-line rules (``lines``) and the passive address rule, without a socket."""

from __future__ import annotations

from xxftp_pyftpdlib.lines import MAX_LINE, LineBuffer
from xxftp_pyftpdlib.passive import may_connect


def test_a_line_up_to_the_limit_is_kept_whole():
    buf = LineBuffer()
    for part in (b"NOOP", b" ", b"x" * (MAX_LINE - 5)):
        buf.add(part)
    assert buf.take() == b"NOOP " + b"x" * (MAX_LINE - 5)
    assert buf.take() == b""  # afresh


def test_a_longer_line_is_one_overlong_line_and_keeps_nothing():
    buf = LineBuffer()
    for _ in range(1000):
        buf.add(b"y" * 1000)  # a megabyte, never held
        assert sum(map(len, buf._parts)) <= MAX_LINE
    assert buf.overlong
    assert buf.take() is None
    buf.add(b"NOOP")
    assert buf.take() == b"NOOP"  # the next line is its own


def test_clear_counts_the_bytes_kept():
    buf = LineBuffer()
    buf.add(b"USER ev")
    assert buf.clear() == 7
    assert buf.take() == b""


def test_only_the_control_address_may_connect_unless_foreign_is_permitted():
    assert may_connect("10.0.0.1", "10.0.0.1", False)
    assert not may_connect("10.0.0.1", "10.0.0.2", False)
    assert may_connect("10.0.0.1", "10.0.0.2", True)
