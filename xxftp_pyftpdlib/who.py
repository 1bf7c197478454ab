"""``xxftpd who``: the sessions open right now on a server root.

Rules that live here:

- A root's session state lives in ``ROOT/.xxftpd/``: found from the root
  alone, by any command given that root, whoever runs the server and
  whatever its environment (``$XDG_RUNTIME_DIR`` differs between the
  server's user and an admin's shell, and ``/run`` needs root to create);
  unreachable by FTP (a dot name); one folder per root, so servers on
  different roots never see each other's sessions.
- That folder is used only if it is a real folder (not a link, not a
  file), owned by the user who uses it (the server that creates sockets
  in it; ``who`` reading them) and closed to everyone else (mode 0700).
  Anything else is refused with a message saying why (``UnsafeState``):
  nothing in it is read, nothing is written or removed. Inside, a name of
  ours (``<pid>.sock``) that is not a socket of that user is refused the
  same way.
- Each serving process (the server, each ``--workers`` worker, each
  ``multi-proc`` session process) keeps one Unix socket there,
  ``<pid>.sock``, bound under a temporary name and renamed into place
  once it listens, so a socket under its final name always answers while
  its process lives. It answers every connection with one JSON document
  (``{"xxftpd": 1, "pid", "root", "sessions": [...]}``) and closes: it
  reads nothing, so it takes no commands.
- Why a socket asked on demand rather than files rewritten every few
  seconds: nothing runs while nobody asks (no timer in the IO loop, no
  disk writes), the answer is as fresh as the question, and a crash
  leaves nothing that looks alive: the socket of a dead process refuses
  connections (a file would have to be judged by its age or its pid,
  which may have been reused). ``who`` removes such a socket, and a
  temporary name whose process is gone; a server stopping cleanly removes
  its own and sweeps the same way.
- A session is described by ``record`` and ``transfer_record`` (the keys
  ``sessions`` returns); a password is never shown (``shown_command``).

What this module must not know: pyftpdlib, handlers, IO loops (the
serving side, ``status``, reads the handlers and hands plain values here).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import stat
import sys
import time
from typing import Any

from .quota import human

__all__ = ["STATE_DIR", "WhoError", "NoServer", "UnsafeState", "sessions", "sweep", "open_state",
           "state_path", "record", "transfer_record", "shown_command", "table", "main"]

log = logging.getLogger("xxftpd")

STATE_DIR = ".xxftpd"
VERSION = 1
QUERY_TIMEOUT = 3.0  # seconds a process has to answer (its answer is built by a thread, not its IO loop)
MAX_ANSWER = 64 * 1024 * 1024
COMMAND_SHOWN = 200  # characters of a command line kept
MASKED = {"PASS", "ACCT"}  # commands whose argument is a secret
RECORD_KEYS = frozenset({"pid", "id", "user", "client", "since", "idle", "command", "transfer"})

SOCKET_NAME = re.compile(r"([0-9]+)\.sock")
BINDING_NAME = re.compile(r"\.([0-9]+)-[0-9a-f]+\.bind")  # a socket not listening yet

EXIT_NO_SERVER = 3  # `xxftpd who` with no server running on the root (as LSB's "not running")
EXIT_REFUSED = 1


class WhoError(Exception):
    """Why the sessions of a root can't be listed; one line for the user."""

    exit_status = EXIT_REFUSED


class NoServer(WhoError):
    """No server is running on this root."""

    exit_status = EXIT_NO_SERVER


class UnsafeState(WhoError):
    """The state folder (or something in it) is not one to trust."""


def state_path(root: str) -> str:
    """Where the session state of the server root ``root`` lives."""
    return os.path.join(os.path.realpath(root), STATE_DIR)


def unsafe_reason(st: os.stat_result, uid: int) -> str | None:
    """Why a state folder with these ``lstat`` results may not be used by
    user ``uid``; None if it may."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by uid {uid} (the server's user must run this)"
    if st.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}: only its owner may use it (0700)"
    return None


def open_state(root: str, create: bool = False) -> int:
    """A descriptor of ``root``'s state folder, checked (``UnsafeState``);
    made (mode 0700) if ``create``. ``FileNotFoundError`` if there is none.

    Everything afterwards goes through this descriptor, so a folder
    swapped for a link after the check is never followed.
    """
    path = state_path(root)
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        reason = unsafe_reason(st, os.geteuid()) if st is not None else None
        raise UnsafeState(f"{path} {reason or 'cannot be opened: ' + (err.strerror or str(err))}") from None
    st = os.fstat(fd)
    reason = unsafe_reason(st, os.geteuid())
    if reason is not None:
        os.close(fd)
        raise UnsafeState(f"{path} {reason}")
    return fd


def in_folder(fd: int, name: str) -> str:
    """A path naming ``name`` in the open folder ``fd``, short enough for a
    Unix socket address (108 bytes) whatever the root's length."""
    if os.path.isdir("/proc/self/fd"):
        return f"/proc/self/fd/{fd}/{name}"
    return os.path.join(os.readlink(f"/dev/fd/{fd}"), name)  # pragma: no cover - no /proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ask(fd: int, name: str) -> dict | None:
    """The answer of the socket ``name``; None if no process listens there
    any more (a stale socket). ``OSError`` or ``ValueError`` if it fails
    otherwise."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(QUERY_TIMEOUT)
        try:
            sock.connect(in_folder(fd, name))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        deadline = time.monotonic() + QUERY_TIMEOUT
        parts, size = [], 0
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                break
            size += len(data)
            if size > MAX_ANSWER:
                raise ValueError("answer too long")
            parts.append(data)
    if not parts:
        raise ValueError("closed without one (a process ending, or one that does not answer this user)")
    answer = json.loads(b"".join(parts))
    if not isinstance(answer, dict) or not isinstance(answer.get("sessions"), list):
        raise ValueError("not a session list")
    return answer


def _unlink(fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass


def _entries(fd: int) -> list[tuple[str, os.stat_result]]:
    """Our names in the state folder with their ``lstat``; ``UnsafeState``
    if one of them is not what we would have put there."""
    found = []
    for name in sorted(os.listdir(fd)):
        if not (SOCKET_NAME.fullmatch(name) or BINDING_NAME.fullmatch(name)):
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            what = "is not a socket" if not stat.S_ISSOCK(st.st_mode) else f"is owned by uid {st.st_uid}"
            raise UnsafeState(f"{STATE_DIR}/{name} {what}: xxftpd did not make it; remove it")
        found.append((name, st))
    return found


def _collect(fd: int, root: str) -> tuple[list[dict], int]:
    """The sessions of every live process, and how many processes answered;
    removes what dead processes left."""
    real_root = os.path.realpath(root)
    found: list[dict] = []
    live = 0
    for name, st in _entries(fd):
        match = BINDING_NAME.fullmatch(name)
        if match:  # a socket being set up; left behind if its process died
            if not _pid_alive(int(match.group(1))):
                _unlink(fd, name)
            continue
        try:
            answer = _ask(fd, name)
        except OSError as err:
            log.warning("%s/%s did not answer: %s", STATE_DIR, name, err.strerror or err)
            live += 1  # a live process (it accepted), too busy to answer
            continue
        except ValueError as err:
            log.warning("%s/%s gave no valid answer: %s", STATE_DIR, name, err)
            live += 1
            continue
        if answer is None:
            try:
                if os.stat(name, dir_fd=fd, follow_symlinks=False).st_ino == st.st_ino:
                    _unlink(fd, name)  # the same dead socket, not a new one under that name
            except FileNotFoundError:
                pass
            continue
        if answer.get("root") != real_root:
            log.warning("%s/%s answers for another root (%s): ignored", STATE_DIR, name, answer.get("root"))
            continue
        live += 1
        found.extend(s for s in answer["sessions"] if isinstance(s, dict) and RECORD_KEYS <= s.keys())
    found.sort(key=lambda s: (s.get("since") or 0, s.get("pid") or 0, s.get("id") or 0))
    return found, live


def sessions(root: str) -> list[dict]:
    """The sessions open right now on the server(s) running on ``root``.

    Each is a dict: ``pid`` (the process holding it) and ``id`` (unique
    within that process), ``user`` (None before login), ``client``
    ("ip:port", "[ipv6]:port"), ``since`` (epoch seconds), ``idle``
    (seconds since its last command or transfer; 0 while a transfer
    runs), ``command`` (the current or last command line, a password
    masked), ``transfer`` (None, or ``direction`` "upload", "download" or
    "listing", ``path`` (FTP path), ``bytes`` done so far, ``size`` (the
    total, or None where unknown), ``rate`` (bytes per second, on average
    since the data connection opened)). Oldest first.

    Raises ``NoServer`` when no server runs on ``root`` (what crashed
    processes left is removed), ``UnsafeState`` when the state folder is
    not one to trust. It asks every serving process and waits for each
    (at most ``QUERY_TIMEOUT`` seconds): call it off an IO loop.
    """
    path = state_path(root)
    try:
        fd = open_state(root)
    except FileNotFoundError:
        raise NoServer(f"no xxftpd is running on {os.path.realpath(root)} (no {path})") from None
    try:
        found, live = _collect(fd, root)
    finally:
        os.close(fd)
    if not live:
        raise NoServer(f"no xxftpd is running on {os.path.realpath(root)}")
    return found


def sweep(root: str) -> None:
    """Remove what dead processes left in ``root``'s state folder (a server
    stopping cleanly calls this after its own processes ended)."""
    try:
        fd = open_state(root)
    except (OSError, WhoError):
        return
    try:
        _collect(fd, root)
    except (OSError, WhoError):
        pass
    finally:
        os.close(fd)


# --- what a session looks like (the serving side fills these in)

def shown_command(line: str) -> str:
    """A command line as ``who`` shows it: a secret argument masked, cut
    to ``COMMAND_SHOWN`` characters."""
    verb = line.split(" ", 1)[0]
    if verb.upper() in MASKED:
        return f"{verb} ****" if " " in line else verb
    return line[:COMMAND_SHOWN]


def transfer_record(direction: str, path: str, done: int, size: int | None, elapsed: float) -> dict:
    """A running transfer: ``direction`` "upload", "download" or "listing"."""
    rate = int(done / elapsed) if elapsed > 0 else 0
    return {"direction": direction, "path": path, "bytes": done, "size": size, "rate": rate}


def record(pid: int, id: int, user: str | None, ip: str, port: int, since: float, idle: float,
           command: str, transfer: dict | None) -> dict:
    """One session, as ``sessions`` returns it."""
    client = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return {"pid": pid, "id": id, "user": user, "client": client, "since": round(since, 3),
            "idle": 0.0 if transfer is not None else round(max(0.0, idle), 1),
            "command": command, "transfer": transfer}


def answer(pid: int, root: str, records: list[dict]) -> bytes:
    """What a process's socket sends."""
    return json.dumps({"xxftpd": VERSION, "pid": pid, "root": root, "sessions": records}).encode() + b"\n"


# --- the command

def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _transfer_text(t: dict[str, Any] | None) -> str:
    if not t:
        return ""
    done = human(t["bytes"])
    if t.get("size"):
        done += f"/{human(t['size'])} {min(100, t['bytes'] * 100 // max(1, t['size']))}%"
    return f"{t['direction']} {_printable(t['path'])} {done} at {human(t['rate'])}/s"


def table(found: list[dict], now: float | None = None) -> str:
    """The sessions as a table for people."""
    now = time.time() if now is None else now
    rows = [["PID", "ID", "USER", "CLIENT", "SINCE", "IDLE", "COMMAND", "TRANSFER"]]
    for s in found:
        since = s["since"]
        when = time.strftime("%H:%M:%S" if now - since < 86400 else "%Y-%m-%d", time.localtime(since))
        rows.append([str(s["pid"]), str(s["id"]), _printable(s["user"]) if s["user"] is not None else "-",
                     s["client"], when, _duration(s["idle"]), _printable(s["command"]),
                     _transfer_text(s["transfer"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(root: str, as_json: bool = False, out=None, err=None) -> int:
    """``xxftpd who``: 0 with the list (maybe empty), ``EXIT_NO_SERVER``
    when no server runs on ``root``, ``EXIT_REFUSED`` when the state
    folder is refused or unreadable; a message on ``err`` then."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        found = sessions(root)
    except WhoError as e:
        print(f"xxftpd: {e}", file=err)
        return e.exit_status
    except OSError as e:
        print(f"xxftpd: error: cannot read {state_path(root)}: {e.strerror or e}", file=err)
        return EXIT_REFUSED
    if as_json:
        print(json.dumps(found, indent=1), file=out)
    else:
        print(table(found), file=out)
        print(f"{len(found)} session{'s' if len(found) != 1 else ''}", file=out)
    return 0
