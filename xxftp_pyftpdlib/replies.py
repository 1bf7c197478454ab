"""The replies to commands that name a path which is missing or of the wrong kind.

What lives here: one table (``RULES``) that says, for each FTP command that
names a path, which kind of entry it needs (a file, a folder, or anything)
and the reply it gets when the path does not exist, is of the wrong kind,
or is refused by the tree's rules; and ``answer()``, which reads it.
Also ``digest()``, the reply that carries a file's hash.

The rules, and why:

- A path that does not exist answers ``550`` for every command, whatever
  the command. Clients read only 550 as "not found": rclone's FTP library
  creates a missing folder only after a 550 to ``MLSD``, and pyftpdlib's
  own ``501 No such directory.`` made ``rclone sync`` and ``rclone mkdir``
  fail. ProFTPD and Pure-FTPd answer 550 too. A path *under* a file
  (``file.txt/x``) does not exist either.
- A path that exists but is the wrong kind answers ``550``, RFC 959's
  "file unavailable" (CWD/RMD of a file, RETR/DELE/SIZE/MDTM/MFMT of a
  folder), except ``MLSD`` of a file: ``501``, the "argument not valid"
  that pyftpdlib reads RFC 3659 as asking for and that its conformance
  suite asserts (``test_mlsd``). Clients only list a file by mistake; the
  name they create folders after is the missing one, which gets 550.
- A path the tree refuses (a hidden name, an escape, a loop) answers
  ``550`` with the tree's reason.
- Texts start with the ``strerror`` words that pyftpdlib and its suite
  use ("No such file or directory", "Not a directory", "Is a directory"),
  and SIZE/MDTM/MFMT keep pyftpdlib's "not retrievable".

What this module must not know: sockets, pyftpdlib, the filesystem or the
tree. The handler finds out what the path is (``Kind``) and sends the
reply; this module only maps (command, kind) to a reply, so the table can
be read, and tested, on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    """What a named path turned out to be."""

    MISSING = "missing"    # nothing there (ENOENT, or a path under a file: ENOTDIR)
    FILE = "file"          # a regular file
    FOLDER = "folder"      # a folder (or a mount)
    OTHER = "other"        # a FIFO, a socket, a device
    REFUSED = "refused"    # the tree's rules refuse the path (hidden, escape, loop)


class Needs(enum.Enum):
    """What kind of entry a command works on."""

    ANY = "any"
    FILE = "file"              # a regular file: what can be read, sized, dated
    FOLDER = "folder"
    NOT_FOLDER = "not folder"  # DELE: a file, a FIFO, a socket...


MISSING_CODE = 550
REFUSED_CODE = 550


@dataclass(frozen=True)
class Rule:
    """How one command answers a path that is missing or of the wrong kind."""

    needs: Needs
    wrong_kind_code: int = 550
    note: str = ""  # appended to every refusal text, e.g. "not retrievable"


_RETRIEVABLE = Rule(Needs.FILE, note="not retrievable")

# command -> rule. Commands that create a path (STOR, MKD, RNTO...) are not
# here: for them a missing path is the normal case.
RULES: dict[str, Rule] = {
    "MLSD": Rule(Needs.FOLDER, wrong_kind_code=501),
    "MLST": Rule(Needs.ANY),
    "LIST": Rule(Needs.ANY),
    "NLST": Rule(Needs.ANY),
    "STAT": Rule(Needs.ANY),
    "SIZE": _RETRIEVABLE,
    "MDTM": _RETRIEVABLE,
    "MFMT": _RETRIEVABLE,
    "CWD": Rule(Needs.FOLDER),
    "XCWD": Rule(Needs.FOLDER),
    "RETR": Rule(Needs.FILE),
    "DELE": Rule(Needs.NOT_FOLDER),
    "RMD": Rule(Needs.FOLDER),
    "XRMD": Rule(Needs.FOLDER),
    "RNFR": Rule(Needs.ANY),
    "SITE CHMOD": Rule(Needs.ANY),
    "SITE QUOTA": Rule(Needs.ANY),
    "HASH": Rule(Needs.FILE, wrong_kind_code=553),  # the draft's reply to a folder
    "XSHA256": Rule(Needs.FILE),
    "XSHA512": Rule(Needs.FILE),
    "XSHA1": Rule(Needs.FILE),
    "XMD5": Rule(Needs.FILE),
    "XCRC": Rule(Needs.FILE),
}


def _fits(needs: Needs, kind: Kind) -> bool:
    if needs is Needs.FOLDER:
        return kind is Kind.FOLDER
    if needs is Needs.FILE:
        return kind is Kind.FILE
    if needs is Needs.NOT_FOLDER:
        return kind is not Kind.FOLDER
    return True


def _wrong_kind_words(needs: Needs, kind: Kind) -> str:
    if needs is Needs.FOLDER:
        return "Not a directory"
    return "Is a directory" if kind is Kind.FOLDER else "Not a regular file"


def answer(command: str, kind: Kind, path: str, reason: str = "") -> tuple[int, str] | None:
    """The (code, text) ``command`` must answer for ``path`` of ``kind``.

    None when the table has nothing to say: the command is not in it, or
    the path is of a kind the command works on (the command then runs and
    answers for itself). ``reason`` is the tree's words for a REFUSED path.
    """
    rule = RULES.get(command.upper())
    if rule is None:
        return None
    if kind is Kind.MISSING:
        code, words = MISSING_CODE, "No such file or directory"
    elif kind is Kind.REFUSED:
        code, words = REFUSED_CODE, reason or "Permission denied"
    elif _fits(rule.needs, kind):
        return None
    else:
        code, words = rule.wrong_kind_code, _wrong_kind_words(rule.needs, kind)
    note = f", {rule.note}" if rule.note else ""
    if kind is Kind.REFUSED:
        return code, f"{words}{note}."
    return code, f"{words}: {path}{note}."


# --- logins refused by a user's limits (``userlimits``): answered 421, then closed

def too_many_sessions(limit: int, per_address: bool) -> str:
    """The text refusing a login past ``max_sessions`` or ``max_sessions_per_ip``."""
    where = " from your address" if per_address else ""
    plural = "s" if limit != 1 else ""
    return (f"Too many sessions of this user{where} (at most {limit} session{plural}); "
            "try again when one has ended.")


INVALID_LIMITS = "Login refused: the limits file of this account is invalid; the server log says why."


def digest(command: str, algorithm: str, start: int, end: int, value: str, path: str) -> str:
    """The reply carrying a file's hash: HASH's as draft-bryan-ftpext-hash
    words it (algorithm, the bytes covered, lowercase hex, the path); the
    X-commands' the hex alone, as ProFTPD's mod_digest, FluentFTP and
    WinSCP know them."""
    if command == "HASH":
        return f"213 {algorithm} {start}-{end} {value} {path}"
    return f"213 {value}"
