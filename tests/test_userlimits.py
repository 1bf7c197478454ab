"""The rules of ``.xxftp/limits`` (userlimits) and the board every process
shares (userboard), without a server."""

from __future__ import annotations

import os

import pytest

from xxftp_pyftpdlib.userboard import UNCOUNTED, Board
from xxftp_pyftpdlib.userlimits import (CATCH_UP, DOWNLOAD, MAX_SLICE, MIN_SLICE, NO_LIMITS, UPLOAD, UserLimits, charge,
                                        parse_limits, session_refusal, slice_for)

M = 1024 * 1024


def test_a_file_sets_rates_with_suffixes_and_counts():
    parsed = parse_limits("# alice\ndownload_rate = 10M\n\nupload_rate=512K  # slow\n"
                          "max_sessions = 3\nmax_sessions_per_ip = 2\n", "p")
    assert parsed.problems == ()
    assert parsed.value == UserLimits(10 * M, 512 * 1024, 3, 2)
    assert parse_limits("download_rate = 1G\nupload_rate = 1048576\n", "p").value == UserLimits(1024 * M, M)


def test_zero_and_absent_keys_are_no_limit():
    assert parse_limits("", "p").value == NO_LIMITS
    assert parse_limits("download_rate = 0\nmax_sessions = 0\n", "p").value == NO_LIMITS
    assert parse_limits("upload_rate = 2M\n", "p").value.rate(DOWNLOAD) == 0


@pytest.mark.parametrize("line, words", [
    ("download_rate = fast", "invalid download_rate 'fast'"),
    ("download_rate = -1", "invalid download_rate '-1'"),
    ("download_rate =", "invalid download_rate ''"),
    ("max_sessions = 2.5", "invalid max_sessions '2.5'"),
    ("max_sessions = 3M", "invalid max_sessions '3M'"),
    ("max_sessions = ３", "invalid max_sessions '３'"),
    ("max_session = 3", "unknown key 'max_session'"),
    ("max_sessions 3", "expected 'key = value'"),
])
def test_a_bad_line_makes_the_whole_file_invalid(line, words):
    parsed = parse_limits(f"upload_rate = 1M\n{line}\n", "home/.xxftp/limits")
    assert parsed.value is None
    assert len(parsed.problems) == 1  # one log line
    assert str(parsed.problems[0]).startswith(f"home/.xxftp/limits:2: {words}")
    assert "logins are refused" in str(parsed.problems[0])


def test_a_key_given_twice_is_invalid():
    parsed = parse_limits("max_sessions = 1\nmax_sessions = 5\n", "p")
    assert parsed.value is None and [p.line for p in parsed.problems] == [2]


def test_charges_run_the_clock_on_and_idle_time_is_not_saved():
    clock, wait = charge(0.0, 100.0, M, M)  # an idle clock restarts now (give or take the catch-up)
    assert (clock, wait) == pytest.approx((101.0 - CATCH_UP, 1.0 - CATCH_UP))
    clock, wait = charge(clock, 101.0, M, M)  # woken late: the turn is kept
    assert (clock, wait) == pytest.approx((102.0 - CATCH_UP, 1.0 - CATCH_UP))
    clock, wait = charge(clock, 500.0, M, M)  # long idle: no burst saved up
    assert (clock, wait) == pytest.approx((501.0 - CATCH_UP, 1.0 - CATCH_UP))


def test_two_transfers_share_one_clock():
    clock, now, moved = 0.0, 0.0, 0
    ready = [0.0, 0.0]  # when each transfer may move its next slice
    for _ in range(80):
        turn = ready.index(min(ready))  # the transfer due first moves a slice, then is charged
        now = ready[turn]
        clock, wait = charge(clock, now, 256 * 1024, 2 * M)
        ready[turn] = now + max(wait, 0)
        moved += 256 * 1024
    assert moved / clock == pytest.approx(2 * M)
    assert max(ready) - min(ready) <= 256 * 1024 / (2 * M) + 1e-9  # in turn, neither starves


def test_slices_stay_between_bounds():
    assert slice_for(1) == 1  # at most a second's worth: a transfer moves every second
    assert slice_for(MIN_SLICE + 1) == MIN_SLICE
    assert slice_for(800 * 1024) == 100 * 1024
    assert slice_for(10 * 1024 * M) == MAX_SLICE


def test_session_refusals():
    limits = UserLimits(max_sessions=3, max_sessions_per_ip=2)
    assert session_refusal(limits, 2, 1) is None
    assert session_refusal(limits, 3, 0) == (3, False)
    assert session_refusal(limits, 2, 2) == (2, True)
    assert session_refusal(NO_LIMITS, 10**6, 10**6) is None


# --- the board


def test_sessions_are_counted_per_user_and_address_and_freed():
    board = Board(users=16, sessions=64)
    alice, bob = board.key("alice"), board.key("bob")
    here, there = board.key("127.0.0.1"), board.key("192.0.2.1")
    limits = UserLimits(max_sessions=3, max_sessions_per_ip=2)
    first, _ = board.join(alice, here, limits)
    assert board.join(alice, here, limits)[1] is None
    assert board.join(alice, here, limits) == (None, (2, True))
    third, _ = board.join(alice, there, limits)
    assert board.join(alice, there, limits) == (None, (3, False))
    assert board.join(bob, here, limits)[1] is None  # another user: not counted with alice
    board.leave(first, alice)
    assert board.join(alice, there, limits)[1] is None
    board.leave(third, bob)  # not bob's place: nothing freed
    assert board.count(alice) == 3


def test_a_place_of_a_process_that_ended_is_freed():
    board = Board(users=16, sessions=64)
    alice = board.key("alice")
    limits = UserLimits(max_sessions=1)
    pid = os.fork()
    if pid == 0:  # a session process that dies without leaving
        os._exit(0 if board.join(alice, 1, limits)[1] is None else 1)
    _, status = os.waitpid(pid, 0)
    assert status == 0 and board.count(alice) == 1
    assert board.join(alice, 1, limits)[1] is None  # the dead place was found and freed
    assert board.count(alice) == 1


def test_a_full_table_lets_sessions_in_uncounted():
    board = Board(users=16, sessions=2)
    limits = UserLimits(max_sessions=5)
    places = [board.join(board.key("alice"), 1, limits)[0] for _ in range(3)]
    assert places[2] == UNCOUNTED
    board.leave(UNCOUNTED, board.key("alice"))  # nothing to free


def test_rate_clocks_are_shared_with_forked_processes():
    board = Board(users=16, sessions=16)
    alice = board.key("alice")
    pid = os.fork()
    if pid == 0:
        board.charge(alice, DOWNLOAD, 10 * M, M)  # ten seconds of alice's rate
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.charge(alice, DOWNLOAD, M, M) == pytest.approx(11.0, abs=0.5)
    assert board.charge(alice, UPLOAD, M, M) <= 1.0  # the other direction has its own clock
    assert board.charge(board.key("bob"), DOWNLOAD, M, M) <= 1.0


def test_an_idle_record_is_taken_by_another_user_when_the_table_is_full():
    board = Board(users=2, sessions=4)
    users = [board.key(name) for name in ("a", "b", "c")]
    for user in users:  # each moves a tiny slice: its clock runs out at once
        board.charge(user, DOWNLOAD, 1, 10**9)
    assert board.charge(users[0], DOWNLOAD, 1, 10**6) < 0.01  # whichever record it takes: its own clock
    assert board.charge(users[1], DOWNLOAD, 1, 10**6) < 0.01


# --- the parser under fuzzing (hypothesis): any text, and lines of real keys with odd values

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = st.sampled_from(["download_rate", "upload_rate", "max_sessions", "max_sessions_per_ip", "rate", "", "#x"])
VALUES = st.sampled_from(["0", "10M", "512K", "2G", "7", "１", "-1", "1.5", "9" * 40, "10 M", "10MiB", "", "x"])
LINE = st.tuples(KEYS, st.sampled_from([" = ", "=", " ", "==", " = # c"]), VALUES).map("".join)


@settings(max_examples=int(os.environ.get("XXFTPD_FUZZ_EXAMPLES", "0")) or 300, deadline=None)
@given(text=st.text() | st.lists(LINE, max_size=8).map("\n".join))
def test_parse_limits_never_raises(text):
    parsed = parse_limits(text, "l")
    assert (parsed.value is None) == bool(parsed.problems)  # invalid: logins refused, and it says why
    lines = text.splitlines()
    for problem in parsed.problems:
        assert problem.path == "l" and 1 <= problem.line <= len(lines)
        assert lines[problem.line - 1].split("#", 1)[0].strip()  # a real content line
    if parsed.value is not None:
        assert all(isinstance(v, int) and v >= 0 for v in vars(parsed.value).values())
