"""The classic xferlog format (wu-ftpd, ProFTPD, vsftpd), one line per transfer.

Fields: current-time transfer-time remote-host file-size filename
transfer-type special-action-flag direction access-mode username
service-name authentication-method authenticated-user-id
completion-status. Spaces in file names become ``_`` so the line still
splits on blanks, as the other servers do.
"""

from __future__ import annotations

import math
import os
import time


def line(when: float, seconds: float, host: str, size: int, path: str, binary: bool,
         incoming: bool, user: str, anonymous: bool, password: str, completed: bool) -> str:
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(when))
    name = "".join("_" if c.isspace() else c for c in path) or "/"
    login = (password or "*").replace(" ", "_") if anonymous else user
    return (f"{stamp} {max(1, math.ceil(seconds))} {host} {size} {name} {'b' if binary else 'a'} _ "
            f"{'i' if incoming else 'o'} {'a' if anonymous else 'r'} {login} ftp 0 * {'c' if completed else 'i'}\n")


def append(path: str, text: str) -> None:
    """Append one line; O_APPEND keeps lines whole across processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    finally:
        os.close(fd)
