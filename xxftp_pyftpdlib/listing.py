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
"""

from __future__ import annotations

import functools
import os
import stat
import time
from typing import Callable

from .permissions import Permission

SIX_MONTHS = 180 * 24 * 60 * 60
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# MLSx perm fact -> the pyftpdlib authorizer letter that grants it
_FACT_LETTER = {"a": "a", "c": "w", "d": "d", "e": "e", "f": "f", "l": "l", "m": "m", "p": "d", "r": "r", "w": "w"}

TimeFunc = Callable[[float], time.struct_time]


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


def _mtime_text(mtime: float, now: float, timefunc: TimeFunc) -> str:
    fmt = "%d  %Y" if now - mtime > SIX_MONTHS else "%d %H:%M"
    try:
        t = timefunc(mtime)
        return f"{_MONTHS[t.tm_mon - 1]} {time.strftime(fmt, t)}"
    except (ValueError, OverflowError, OSError):
        t = timefunc(now)
        return f"{_MONTHS[t.tm_mon - 1]} {time.strftime('%d %H:%M', t)}"


def list_line(name: str, st: os.stat_result, mode: int, owner: str, group: str,
              now: float, timefunc: TimeFunc) -> str:
    """One ``ls -l`` style line, CRLF included."""
    return "%s %3s %-8s %-8s %8s %s %s\r\n" % (
        stat.filemode(mode), st.st_nlink or 1, owner, group, st.st_size,
        _mtime_text(st.st_mtime, now, timefunc), name,
    )


def mlsx_formatter(facts: list[str] | set[str], timefunc: TimeFunc) -> Callable[[str, os.stat_result, int, str], str]:
    """A function making MLSD lines (``fact=value;... name``, CRLF included)
    for the facts asked for, in sorted order, decided once per listing."""
    wanted = sorted(set(facts) & {"type", "perm", "size", "modify", "create", "unix.mode",
                                  "unix.uid", "unix.gid", "unique"})

    def when(seconds: float) -> str | None:
        try:
            return time.strftime("%Y%m%d%H%M%S", timefunc(seconds))
        except (ValueError, OverflowError, OSError):
            return None

    getters = {
        "type": lambda st, mode, perm: "dir" if stat.S_ISDIR(st.st_mode) else "file",
        "perm": lambda st, mode, perm: perm,
        "size": lambda st, mode, perm: st.st_size,
        "modify": lambda st, mode, perm: when(st.st_mtime),
        "create": lambda st, mode, perm: when(st.st_ctime),
        "unix.mode": lambda st, mode, perm: oct(mode & 0o777),
        "unix.uid": lambda st, mode, perm: st.st_uid,
        "unix.gid": lambda st, mode, perm: st.st_gid,
        "unique": lambda st, mode, perm: f"{st.st_dev:x}g{st.st_ino:x}",
    }
    plan = [(fact, getters[fact]) for fact in wanted]

    def line(name: str, st: os.stat_result, mode: int, perm: str) -> str:
        parts = []
        for fact, get in plan:
            value = get(st, mode, perm)
            if value is not None:
                parts.append(f"{fact}={value};")
        return f"{''.join(parts)} {name}\r\n"

    return line
