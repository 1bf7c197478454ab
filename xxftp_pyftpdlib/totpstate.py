"""Where one-time codes are remembered as used, and secrets are written.

Rules that live here:

- The last step a user logged in with lives in ``.xxftp/totp.used`` beside
  the secret: one number, written by the server (mode 0600). Recording a
  step takes an exclusive ``flock`` on that file, reads the step there and
  writes the new one only if it is later, all under the lock: two
  sessions (threads, or ``--workers`` processes, or several servers on
  one tree) offering the same code see it accepted once.
- The step is written in place at a fixed width and synced before the
  lock is let go: a reader under the lock never sees half of it.
  Content that is no number counts as no step used (and is logged).
- A ``totp.used`` the server does not trust (``config.distrust``), or one
  it can't open or write (a read-only ``.xxftp``), refuses the login: a
  code that can't be recorded could be used again.
- ``write_secret`` writes a new secret file whole (mode 0600) and never
  replaces an existing one unless told to.

This module knows nothing of FTP or of how a code is computed (``totp``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

from . import passwords
from .config import distrust

__all__ = ["USED", "record", "write_secret"]

log = logging.getLogger("xxftpd.auth")

USED = "totp.used"
_WIDTH = 20


def record(config_dir: str, step: int) -> bool:
    """Record ``step`` as used for the home of ``config_dir`` (its
    ``.xxftp``): False if that step, or a later one, was used already.
    OSError if it can't be recorded."""
    path = os.path.join(config_dir, USED)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        why = distrust(os.fstat(fd))
        if why:
            raise PermissionError(errno.EPERM, f"{path} is not trusted ({why})")
        fcntl.flock(fd, fcntl.LOCK_EX)  # let go when the descriptor closes
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        try:
            last = int(text) if text else -1
        except ValueError:
            log.warning("%s:1: not a step number: ignored", path)
            last = -1
        if step <= last:
            return False
        os.pwrite(fd, f"{step:0{_WIDTH}d}\n".encode(), 0)
        os.ftruncate(fd, _WIDTH + 1)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def write_secret(path: str, secret: str, force: bool = False) -> None:
    """Write a secret file (mode 0600), its folder made if missing;
    FileExistsError if one is there and ``force`` is False."""
    passwords.write(path, secret, replace=force)
