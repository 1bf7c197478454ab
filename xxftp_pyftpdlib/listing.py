"""How entries are shown in LIST, STAT and MLSD/MLST replies.

Rules that live here:

- LIST lines follow ``ls -l`` as proftpd and pyftpdlib print them.
- The mode shown is the real mode filtered by the area's permission, so
  a client sees what it may really do: no ``r`` on files without
  ``read``, no ``w`` on files without ``write`` and ``modify``, no ``w``
  on folders without ``write`` or ``modify``.
- MLSx ``perm=`` facts (RFC 3659) are derived from the same permission,
  intersected with what the authorizer grants, and never offer delete or
  rename on the home or a mount point.
- Order: a folder of up to ``SORTED_UP_TO`` visible entries is listed
  sorted by name (RFC 959's advice, what pyftpdlib and most servers do); a
  larger one in the order the file system keeps it, its mounts last, so
  that it can be sent as it is read, holding no more than that many
  entries at a time.

What it must not know: sockets, the event loop, how lines are sent.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import stat
import time
from typing import Callable, Iterable, Iterator, TypeVar

from .permissions import Permission

SIX_MONTHS = 180 * 24 * 60 * 60
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# MLSx perm fact -> the pyftpdlib authorizer letter that grants it
_FACT_LETTER = {"a": "a", "c": "w", "d": "d", "e": "e", "f": "f", "l": "l", "m": "m", "p": "d", "r": "r", "w": "w"}

TimeFunc = Callable[[float], time.struct_time]
E = TypeVar("E")

SORTED_UP_TO = 1000  # entries: a folder up to this size is listed sorted


def in_order(entries: Iterable[E]) -> tuple[Iterator[E], bool]:
    """``entries`` (objects with a ``name``) in listing order, and whether
    that is the whole folder sorted (True) or folder order (False).

    Reads at most ``SORTED_UP_TO + 1`` entries ahead: sorting needs every
    name, and a big folder's names would take memory and time (60 ms just to
    sort 200,000) that the listing is meant not to hold.
    """
    rest = iter(entries)
    head = list(itertools.islice(rest, SORTED_UP_TO + 1))
    if len(head) <= SORTED_UP_TO:
        head.sort(key=operator.attrgetter("name"))
        return iter(head), True
    return itertools.chain(head, rest), False


def shown_mode(st_mode: int, permission: Permission) -> int:
    """The mode bits to show for an entry under ``permission``."""
    words = permission.words
    if stat.S_ISDIR(st_mode):
        if not ({"write", "modify"} & words):
            st_mode &= ~0o222
        return st_mode
    if "read" not in words:
        st_mode &= ~0o444
    if not {"write", "modify"} <= words:
        st_mode &= ~0o222
    return st_mode


@functools.lru_cache(maxsize=256)
def perm_facts(permission: Permission, is_dir: bool, is_top: bool, granted: str) -> str:
    """The RFC 3659 ``perm`` fact of an entry."""
    words = permission.words
    change = "modify" in words and not is_top
    if is_dir:
        facts = "el" + ("c" if "write" in words else "") + ("mp" if "modify" in words else "")
    else:
        facts = ("r" if "read" in words else "") + ("aw" if {"write", "modify"} <= words else "")
    facts += "df" if change else ""
    return "".join(sorted(f for f in facts if _FACT_LETTER[f] in granted))


class _Clock:
    """The time texts of one listing, each made once per distinct second
    (the files of a folder share few: gmtime + strftime per line was a
    third of a LIST).

    Times come as whole seconds, ``stat_result[8]`` (mtime) and ``[9]``
    (ctime): ints from the kernel, so every one is a good cache key.
    """

    def __init__(self, timefunc: TimeFunc, now: float) -> None:
        self.timefunc, self.now = timefunc, now
        self._ls: dict[int, str] = {}
        self._mlsx: dict[int, str | None] = {}

    def ls(self, second: int) -> str:
        """``Mon dd HH:MM`` for the last six months, ``Mon dd  YYYY`` before."""
        text = self._ls.get(second)
        if text is None:
            fmt = "%d  %Y" if self.now - second > SIX_MONTHS else "%d %H:%M"
            try:
                t = self.timefunc(second)
                text = f"{_MONTHS[t.tm_mon - 1]} {time.strftime(fmt, t)}"
            except (ValueError, OverflowError, OSError):  # a time gmtime can't take: show now
                t = self.timefunc(self.now)
                text = f"{_MONTHS[t.tm_mon - 1]} {time.strftime('%d %H:%M', t)}"
            self._ls[second] = text
        return text

    def mlsx(self, second: int) -> str | None:
        """``YYYYMMDDHHMMSS``, or None for a time that can't be shown."""
        if second in self._mlsx:
            return self._mlsx[second]
        try:
            text = time.strftime("%Y%m%d%H%M%S", self.timefunc(second))
        except (ValueError, OverflowError, OSError):
            text = None
        self._mlsx[second] = text
        return text


def list_formatter(owner: Callable[[int], str], group: Callable[[int], str], timefunc: TimeFunc,
                   now: float) -> Callable[[str, os.stat_result, Permission, bool], str]:
    """A function making ``ls -l`` style lines (CRLF included) for one listing.

    The part before the size (mode, links, owner, group) is made once per
    distinct combination, the time once per second: most lines of a big
    folder only fill in a size and a name.
    """
    clock = _Clock(timefunc, now)
    heads: dict[tuple[int, int, int, int, int], str] = {}

    def line(name: str, st: os.stat_result, permission: Permission, is_top: bool = False) -> str:
        key = (st.st_mode, st.st_nlink, st.st_uid, st.st_gid, id(permission))  # permissions outlive the listing
        head = heads.get(key)
        if head is None:
            mode = stat.filemode(shown_mode(st.st_mode, permission))
            head = heads[key] = f"{mode} {st.st_nlink or 1:>3} {owner(st.st_uid):<8} {group(st.st_gid):<8} "
        return f"{head}{st.st_size:>8} {clock.ls(st[8])} {name}\r\n"

    return line


_MLSX_FACTS = ("type", "perm", "size", "modify", "create", "unix.mode", "unix.uid", "unix.gid", "unique")
_FIXED = {"type", "perm", "unix.mode", "unix.uid", "unix.gid"}  # the same for every entry of a kind


def mlsx_formatter(facts: list[str] | set[str], timefunc: TimeFunc,
                   granted: str) -> Callable[[str, os.stat_result, Permission, bool], str]:
    """A function making MLSD lines (``fact=value;... name``, CRLF included)
    for the facts asked for, in sorted order, decided once per listing.

    The facts fixed by an entry's mode, owner and area (type, perm,
    unix.mode, unix.uid, unix.gid) are written into one template per kind
    of entry; a line fills in the rest.
    """
    wanted = sorted(set(facts) & set(_MLSX_FACTS))
    clock = _Clock(timefunc, time.time())
    per_entry: dict[str, Callable[[os.stat_result], object]] = {
        "size": lambda st: st.st_size,
        "modify": lambda st: clock.mlsx(st[8]),
        "create": lambda st: clock.mlsx(st[9]),
        "unique": lambda st: f"{st.st_dev:x}g{st.st_ino:x}",
    }
    varying = [fact for fact in wanted if fact not in _FIXED]
    getters = [per_entry[fact] for fact in varying]
    templates: dict[tuple, tuple[str, dict[str, object]]] = {}

    def template(st: os.stat_result, permission: Permission, is_top: bool) -> tuple[str, dict[str, object]]:
        fixed = {
            "type": "dir" if stat.S_ISDIR(st.st_mode) else "file",
            "perm": perm_facts(permission, stat.S_ISDIR(st.st_mode), is_top, granted),
            "unix.mode": oct(shown_mode(st.st_mode, permission) & 0o777),
            "unix.uid": st.st_uid,
            "unix.gid": st.st_gid,
        }
        # (the fixed values are words, octal modes and numbers: no "%" to escape)
        text = "".join(f"{fact}={fixed[fact]};" if fact in _FIXED else f"{fact}=%s;" for fact in wanted)
        return text + " %s\r\n", fixed

    def line(name: str, st: os.stat_result, permission: Permission, is_top: bool) -> str:
        key = (st.st_mode, st.st_uid, st.st_gid, id(permission), is_top)  # permissions outlive the listing
        found = templates.get(key)
        if found is None:
            found = templates[key] = template(st, permission, is_top)
        values = [get(st) for get in getters]
        if None in values:  # a time that can't be shown: leave that fact out
            given = dict(zip(varying, values), **found[1])
            return "".join(f"{f}={given[f]};" for f in wanted if given[f] is not None) + f" {name}\r\n"
        values.append(name)
        return found[0] % tuple(values)

    return line
