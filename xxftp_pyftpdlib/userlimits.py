"""Per-user limits: what ``.xxftp/limits`` says and what it implies.

Rules that live here:

- A home's ``.xxftp/limits`` holds ``key = value`` lines (blank lines and
  ``#`` comments ignored). Keys: ``download_rate`` and ``upload_rate``
  (bytes per second, written as a size file writes bytes: ``512K``,
  ``10M``, ``1G``), ``max_sessions`` and ``max_sessions_per_ip`` (whole
  numbers). ``0`` or an absent key means no limit; no file means no limits.
- A file with any bad line (an unknown key, a value that is no number, a
  key given twice, a line without ``=``) is *invalid* as a whole, and an
  invalid file refuses the user's logins: a typo must not quietly lift a
  cap that an administrator set for this very user (the safe side, as a
  bad ``hosts`` or ``size`` file refuses). A session already logged in
  keeps the limits last read.
- Limits apply to the user, all of the user's sessions together, in every
  process of the server: a rate is shared by every transfer of that user
  in that direction; ``max_sessions`` counts the user's logged-in
  sessions, ``max_sessions_per_ip`` those from one client address (an IPv4
  address or an IPv6 /64, as ``addresses.source_of`` says). A login beyond
  either is refused; a session that ends frees its place at once.
- Rates are kept as a virtual clock per user and direction (GCRA): the
  time at which the bytes the user has moved so far are due at the rate.
  A transfer moves a slice, charges it to the clock (which runs on by
  ``slice / rate`` seconds from where it stood, or from now if it stood
  in the past) and waits until the clock says so before its next slice.
  So transfers of one user share the rate whatever their number, an idle
  user saves up no burst, a transfer asks the shared clock once per
  slice, not per read, and nothing is charged for bytes never moved (the
  end of a file, a transfer cut short).
- A clock behind now restarts up to ``CATCH_UP`` (50 ms) in the past: a
  transfer woken a little late keeps its turn, so the rate holds on a
  busy loop; an idle user can't save up more than that.
- A slice is an eighth of a second's worth of the rate, between
  ``MIN_SLICE`` and ``MAX_SLICE``: small enough for a smooth rate, big
  enough that the shared clock is asked a few dozen times a second at most;
  and never more than a second's worth.

What this module must not know: sockets, pyftpdlib, processes or shared
memory (``userboard`` keeps the clocks and the session places; ``limiting``
paces the data channels). Everything here is arithmetic on plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .config import Parsed, Problem, parse_size

__all__ = ["UserLimits", "NO_LIMITS", "DOWNLOAD", "UPLOAD", "parse_limits", "charge",
           "slice_for", "session_refusal", "MIN_SLICE", "MAX_SLICE", "CATCH_UP"]

DOWNLOAD, UPLOAD = 0, 1
MIN_SLICE = 4 * 1024
MAX_SLICE = 256 * 1024
SLICES_PER_SECOND = 8
CATCH_UP = 0.05  # seconds of a user's rate that a late transfer may still use
_NUMBER_LIMIT = 10**12  # past any sensible count (and int()'s limits)


@dataclass(frozen=True)
class UserLimits:
    """One user's limits; 0 is no limit."""

    download_rate: int = 0
    upload_rate: int = 0
    max_sessions: int = 0
    max_sessions_per_ip: int = 0

    def rate(self, direction: int) -> int:
        return self.upload_rate if direction == UPLOAD else self.download_rate


NO_LIMITS = UserLimits()
_RATES = ("download_rate", "upload_rate")
_KEYS = tuple(f.name for f in fields(UserLimits))


def parse_limits(text: str, path: str) -> Parsed[UserLimits | None]:
    """The limits a file sets; ``None`` (with the problems) if any line is bad."""
    limits = NO_LIMITS
    seen: set[str] = set()
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        if not equals:
            problems.append(Problem(path, number, f"expected 'key = value', got {line!r}"))
            continue
        if key not in _KEYS:
            problems.append(Problem(path, number, f"unknown key {key!r} (known: {', '.join(_KEYS)})"))
            continue
        if key in seen:
            problems.append(Problem(path, number, f"{key} given twice"))
            continue
        seen.add(key)
        amount = _value(key, value)
        if amount is None:
            what = "bytes per second, or a number with K, M or G" if key in _RATES else "a whole number"
            problems.append(Problem(path, number, f"invalid {key} {value!r} ({what})"))
            continue
        limits = replace(limits, **{key: amount})
    if problems:  # each says what follows: one log line for a file with one bad line
        return Parsed(None, tuple(Problem(p.path, p.line, f"{p.message}; the user's logins are refused")
                                  for p in problems))
    return Parsed(limits)


def _value(key: str, text: str) -> int | None:
    if key in _RATES:
        return parse_size(text, "").value if text else None
    if text.isascii() and text.isdigit() and int(text) < _NUMBER_LIMIT:
        return int(text)
    return None


# --- rates: one virtual clock per user and direction


def charge(clock: float, now: float, size: int, rate: int) -> tuple[float, float]:
    """Charge ``size`` bytes moved at ``rate`` to a user's clock: (the
    clock after, seconds to wait before moving more; 0 or less: at once).
    A clock in the past restarts ``CATCH_UP`` seconds ago at the most:
    time nobody used is not saved up, beyond what a late wake-up (a busy
    loop, a coarse timer) needs not to lose its turn."""
    earliest = now - CATCH_UP
    clock = (clock if clock > earliest else earliest) + size / rate
    return clock, clock - now


def slice_for(rate: int) -> int:
    """Bytes a transfer moves between two charges at ``rate``: never more
    than a second's worth (a very low rate still moves every second, and
    no transfer idles into the data channel's timeout)."""
    return min(rate, max(MIN_SLICE, min(MAX_SLICE, rate // SLICES_PER_SECOND)))


# --- sessions


def session_refusal(limits: UserLimits, sessions: int, from_address: int) -> tuple[int, bool] | None:
    """Why one more session of a user would pass a limit: (the limit,
    whether it is the per-address one); None if it may log in.
    ``sessions``: the user's live sessions; ``from_address``: those of them
    from the newcomer's address."""
    if limits.max_sessions and sessions >= limits.max_sessions:
        return limits.max_sessions, False
    if limits.max_sessions_per_ip and from_address >= limits.max_sessions_per_ip:
        return limits.max_sessions_per_ip, True
    return None
