"""The quota core on its own: no files, no locks, no server. The decisions
(room, waiting, leases, one writer per file), the ledger text (exactly what
``dump`` writes, or unreadable) and the figures people read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xxftp_pyftpdlib import quota
from xxftp_pyftpdlib.quota import (Busy, Owner, Pending, QuotaExceeded, QuotaInvalid, QuotaWait, State, Unreadable,
                                   Usage)

HOST = "h1"
ME = Owner(HOST, 100, 7)


def pending(since: float = 0.0, keys: tuple[str, ...] = (), owner: Owner = ME) -> Pending:
    return Pending(owner, "delete", "/t/f", 0, 1, None, keys, since=since)


def test_room_is_granted_ahead_by_a_sixteenth_of_what_is_left():
    state = State(used=0)
    assert quota.begin(state, 1600, "a", pending(), ahead=1000) == 100
    assert quota.reserve(state, 1600, "a", 200, 0, 1000, now=1.0) == 200 + (1600 - 200) // 16
    assert quota.begin(state, 0, "b", pending(), ahead=1000) == 1000  # unlimited: nothing held


def test_exactly_the_limit_fits_one_byte_more_does_not():
    state = State(used=0)
    quota.begin(state, 1000, "a", pending(), ahead=0)
    assert quota.reserve(state, 1000, "a", 1000, 0, 0, now=1.0) == 1000
    state = State(used=1)
    quota.begin(state, 1000, "a", pending(), ahead=0)
    with pytest.raises(QuotaExceeded) as err:
        quota.reserve(state, 1000, "a", 1000, 0, 0, now=1.0)
    assert err.value.limit == 1000 and err.value.free == 999 and type(err.value) is QuotaExceeded


def test_at_the_wall_the_oldest_waits_and_the_youngest_gives_way():
    state = State(used=0)
    quota.begin(state, 1000, "old", pending(since=1), ahead=0)
    quota.begin(state, 1000, "young", pending(since=2), ahead=0)
    quota.reserve(state, 1000, "old", 600, 0, 0, now=3)
    quota.reserve(state, 1000, "young", 400, 0, 0, now=3)
    with pytest.raises(QuotaWait):  # the young one still moves: wait for it
        quota.reserve(state, 1000, "old", 700, 600, 0, now=4)
    with pytest.raises(QuotaExceeded) as err:  # both stuck: the youngest gives way
        quota.reserve(state, 1000, "young", 500, 400, 0, now=4)
    assert not isinstance(err.value, QuotaWait)


def test_an_idle_upload_gives_back_its_room_ahead_and_keeps_what_it_wrote():
    state = State(used=0)
    quota.begin(state, 10_000, "idle", pending(), ahead=5000)
    quota.reserve(state, 10_000, "idle", 1, 0, 5000, now=1)
    held = state.usage(10_000).reserved
    assert held > 1
    quota.report(state, "idle", 1, keep_ahead=False, now=5)
    assert state.usage(10_000).reserved == 1
    quota.report(state, "gone", 1, keep_ahead=False, now=5)  # an entry a rebuild dropped: nothing to do


def test_an_invalid_limit_refuses_room_and_growth():
    state = State(used=0)
    quota.begin(state, 0, "a", pending(), ahead=0)
    with pytest.raises(QuotaInvalid):
        quota.reserve(state, None, "a", 1, 0, 0, now=1)
    with pytest.raises(QuotaInvalid):
        quota.fits(state, None, 1)
    quota.fits(state, None, 0)  # shrinking is always allowed


def test_one_writer_per_file_but_many_per_folder():
    state = State(used=0)
    keys = (quota.name_key(1, 2, "f"), quota.folder_key(1, 2), quota.file_key(1, 9))
    quota.begin(state, 0, "a", pending(keys=keys), ahead=0)
    alive = lambda owner: True  # noqa: E731
    assert isinstance(quota.busy(state, quota.writer_keys([quota.name_key(1, 2, "f")]), alive), Busy)
    assert quota.busy(state, quota.writer_keys([quota.name_key(1, 2, "g"), quota.folder_key(1, 2)]), alive) is None
    assert quota.busy(state, [quota.folder_key(1, 2)], alive).kind == "folder"  # RMD of that folder
    assert quota.busy(state, [quota.file_key(1, 9)], alive).kind == "file"  # DELE of that file
    assert quota.busy(state, [quota.file_key(1, 9)], lambda owner: False) is None  # a dead owner holds nothing
    assert quota.busy(state, [quota.file_key(1, 9)], alive, exclude="a") is None


def test_a_ledger_text_round_trips():
    state = State(used=5)
    quota.begin(state, 100, "a", pending(since=1.5, keys=("file:1:2",)), ahead=10)
    state.intents.append(quota.Intent(ME, -3, "/t/x"))
    again = quota.load(quota.dump(state), HOST)
    assert quota.dump(again) == quota.dump(state)


def test_entries_of_the_earlier_format_belong_to_this_host():
    text = json.dumps({"used": 1, "pending": {"1": {"pid": 5, "start": None, "bytes": 3, "crash": "keep",
                                                     "target": "/t/f", "old": 0, "temp": None, "ino": 4,
                                                     "since": 0}},
                       "intents": [{"pid": 5, "start": 9, "delta": -1, "gone": "/t/g"}]})
    state = quota.load(text, HOST)
    assert state.pending["1"].owner == Owner(HOST, 5, None) and state.pending["1"].bytes == 3
    assert state.intents[0].owner == Owner(HOST, 5, 9)


@pytest.mark.parametrize("text", [
    '{"used": 5, "pend', "[]", '{"used": "5"}', '{"used": -1}', '{"used": true}', '{"pending": []}',
    '{"pending": {"a": {}}}', '{"pending": {"a": 3}}', '{"intents": {}}', '{"intents": [{"delta": 1}]}',
    '{"pending": {"a": {"pid": 1, "crash": "explode", "target": "/x", "old": 0, "ino": 1}}}',
    '{"pending": {"a": {"pid": 1, "crash": "keep", "target": "/x", "old": -4, "ino": 1}}}',
    '{"pending": {"a": {"pid": 1, "crash": "keep", "target": "/x", "old": 0, "ino": 1, "keys": [1]}}}',
])
def test_anything_dump_did_not_write_is_unreadable(text):
    with pytest.raises(Unreadable):
        quota.load(text, HOST)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
FIELDS = st.fixed_dictionaries({}, optional={
    "used": JSON, "pending": st.dictionaries(st.text(max_size=3), st.dictionaries(
        st.sampled_from(["pid", "start", "host", "crash", "target", "old", "ino", "temp", "keys", "bytes",
                         "written", "since", "touched", "waiting"]), JSON), max_size=2),
    "intents": st.lists(st.dictionaries(st.sampled_from(["pid", "start", "host", "delta", "gone"]), JSON),
                        max_size=2)})


@settings(max_examples=300, deadline=None)
@given(st.one_of(FIELDS, JSON))
def test_any_json_loads_or_is_unreadable(value):
    try:
        state = quota.load(json.dumps(value), HOST)
    except Unreadable:
        return
    assert quota.load(quota.dump(state), HOST) == state  # what loads, dump writes back the same


def test_figures_are_the_same_in_every_view():
    usage = Usage(10 * 1024, 4 * 1024, 1024)
    f = quota.figures(usage)
    assert (f.limit, f.used, f.held, f.free, f.percent) == ("10.0 KiB", "4.0 KiB", "1.0 KiB", "5.0 KiB", "50%")
    assert quota.usage_text(usage) == "4.0 KiB used of 10.0 KiB (50%), 1.0 KiB held by running uploads, 5.0 KiB free"
    assert quota.free_text(usage) == "5.0 KiB free of 10.0 KiB quota"
    assert quota.figures(None).limit == quota.figures(Usage(0, 0, 0)).limit == "unlimited"
    assert quota.figures(Usage(None, 5, 0)).limit == "INVALID"
    assert str(QuotaExceeded(1024, 0, "/box")) == "/box: quota exceeded: limit 1024 bytes (1.0 KiB), 0 bytes free"
    assert "room still held" in str(QuotaExceeded(1024, held=True))
    assert "quota file is invalid" in str(QuotaInvalid(top="/box"))


def test_temporary_names_fit_any_valid_name():
    assert len(quota.temp_name("123456.789").encode()) < 40
    assert quota.is_temp_name(quota.temp_name("1.2"))
