"""User limits at work: a session's place, a data channel's pace.

The adapters between pyftpdlib's sessions and data channels and the
limits board (rules in ``userlimits``, shared state in ``userboard``):

- ``join`` at login: reads the user's ``.xxftp/limits`` (through the
  configuration cache: hot-reloaded, trusted as every ``.xxftp`` file)
  and takes a place on the board, or says why not (a 421 text). A user
  whose file sets no limit (or who has none) takes no place: a login
  spares the board's lock, and sessions limits written later count only
  the sessions that log in after.
  ``leave`` frees it: at logout, at ``REIN``/``USER``, and when the
  connection closes for any reason.
- ``pacer_for`` gives a file transfer of a user with a rate in its
  direction a ``Pacer``; any other transfer gets none and costs one
  attribute test per read or write. A pacer lets a slice move, charges it
  to the user's clock on the board and, when the clock is ahead, takes the
  channel out of the IO loop and puts it back with ``call_later`` when
  its time comes (no busy wait, no sleeping loop); ``sendfile`` and
  ``splice`` move what the slice allows. The rate is read again at every slice: an edited file
  applies to running transfers at their next slice. A file made invalid
  after a login keeps, for that session, the limits last read from it. A
  transfer that started without a limit runs without one.

This module decides nothing: the arithmetic and the refusals are
``userlimits``', the shared state ``userboard``'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import replies
from .addresses import source_of
from .config import ConfigStore, shared_store
from .userboard import Board
from .userlimits import DOWNLOAD, NO_LIMITS, UPLOAD, UserLimits, slice_for

__all__ = ["Member", "Pacer", "join", "leave", "pacer_for"]

log = logging.getLogger("xxftpd.limits")

MIN_WAIT = 0.002  # a shorter wait is not worth a timer: move the slice now
UNPACED = 1 << 30  # bytes moved before a lifted limit is looked at again


@dataclass
class Member:
    """A logged-in session's place on the board."""

    board: Board
    user: int
    place: int | None  # None: the user had no limits at login, nothing to count
    store: ConfigStore
    home: str
    known: UserLimits  # the limits last read from a valid file

    def rate(self, direction: int) -> int:
        """The user's rate in ``direction`` now (as last known if the file has become invalid)."""
        limits = self.store.user_limits(self.home)
        if limits is not None:
            self.known = limits
        return self.known.rate(direction)


def join(session, home: str) -> str | None:
    """Give a session that logs in into ``home`` its place; the text of
    the 421 that refuses the login, if it is refused."""
    board: Board | None = getattr(session, "limits_board", None)
    root = getattr(session.authorizer, "root", None)
    if board is None or root is None:  # not one of our servers, or a foreign authorizer
        return None
    store = shared_store(root)
    limits = store.user_limits(home)
    if limits is None:
        log.warning("login of %r refused: its limits file is invalid or not trusted", session.username)
        return replies.INVALID_LIMITS
    user = board.key(session.username)
    if limits == NO_LIMITS:  # no place to take (a lock and a scan of the board a login saved)
        session.limits_member = Member(board, user, None, store, home, limits)
        return None
    place, refusal = board.join(user, board.key(source_of(session.remote_ip)), limits)
    if refusal is not None:
        log.info("login of %r from %s refused: %s session(s)%s at most", session.username,
                 session.remote_ip, refusal[0], " per address" if refusal[1] else "")
        return replies.too_many_sessions(*refusal)
    session.limits_member = Member(board, user, place, store, home, limits)
    return None


def leave(session) -> None:
    member = getattr(session, "limits_member", None)
    if member is not None:
        session.limits_member = None
        if member.place is not None:
            member.board.leave(member.place, member.user)


def pacer_for(channel) -> Pacer | None:
    """A pacer for the transfer ``channel`` starts, if its user has a
    rate in that direction (listings are never paced)."""
    member = getattr(channel.cmd_channel, "limits_member", None)
    if member is None or channel.file_obj is None:
        return None
    direction = UPLOAD if channel.receive else DOWNLOAD
    rate = member.rate(direction)
    return Pacer(channel, member, direction, rate) if rate else None


class Pacer:
    """Paces one data channel at its user's rate (shared with the user's
    other transfers in that direction, in every process).

    The channel asks ``budget`` before it moves bytes and says ``moved``
    after; once a slice has moved, it is charged to the user's clock and
    the channel leaves the loop until the clock allows the next one.
    """

    def __init__(self, channel, member: Member, direction: int, rate: int) -> None:
        self.channel = channel
        self.member = member
        self.direction = direction
        self.rate = rate
        self.credit = slice_for(rate)  # bytes the channel may move before it is charged
        self.owed = 0  # bytes moved and not charged yet
        self._timer = None

    def budget(self, wanted: int) -> int:
        """How many bytes (up to ``wanted``) the channel may move now; 0:
        none, the channel is out of the loop until its clock allows."""
        if self._timer is not None:  # put back in the loop by someone else: not yet
            self.channel.del_channel()
            return 0
        return wanted if wanted < self.credit else max(self.credit, 1)

    def moved(self, size: int) -> None:
        self.owed += size
        self.credit -= size
        if self.credit > 0:
            return
        self.rate = self.member.rate(self.direction)  # an edited file applies here
        if not self.rate:  # the limit was lifted
            self.credit, self.owed = UNPACED, 0
            return
        wait = self.member.board.charge(self.member.user, self.direction, self.owed, self.rate)
        self.owed, self.credit = 0, slice_for(self.rate)
        if wait > MIN_WAIT:
            self._pause(wait)

    def _pause(self, wait: float) -> None:
        channel = self.channel
        channel.del_channel()
        self._timer = channel.ioloop.call_later(wait, self._resume, _errback=channel.handle_error)

    def _resume(self) -> None:
        self._timer = None
        channel = self.channel
        if channel._closed or getattr(channel, "_wait_until", 0):  # the quota wait puts it back itself
            return
        events = channel.ioloop.READ if channel.receive else channel.ioloop.WRITE
        if channel._fileno in channel.ioloop.socket_map:  # put back meanwhile (a quota wait that ended)
            channel.modify_ioloop_events(events)
        else:
            channel.add_channel(events=events)  # (modify_ioloop_events would log each resume at debug)

    def close(self) -> None:
        """The transfer ended: cancel the wake-up, charge what moved since the last slice."""
        timer, self._timer = self._timer, None
        if timer is not None and not timer.cancelled:
            timer.cancel()
        if self.owed and self.rate:
            self.member.board.charge(self.member.user, self.direction, self.owed, self.rate)
        self.owed = 0
