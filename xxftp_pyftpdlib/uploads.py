"""A file being received: where its bytes go, what they cost, how it ends.

Rules that live here (the upload modes):

- ``atomic`` (default): a new file or an overwrite is written to a hidden
  temporary in the same folder and moved over the target with
  ``os.replace`` only when the transfer succeeds; on any failure the
  temporary is removed and the old file is untouched. APPE and REST+STOR
  on an existing file write in place and, if they fail, cut the file back
  to its previous length.
- ``atomic-resume``: as atomic, but when the connection breaks (not on a
  quota refusal) what arrived is kept so REST/APPE can resume it: the
  partial new file takes the target's name if that is still free, and an
  in-place append keeps its bytes. An existing file is never replaced by
  a partial one.
- ``standard``: written in place like plain pyftpdlib (STOR truncates at
  once); what arrived is kept on failure.
- Every mode charges the quota tree only for growth (final size minus the
  old size) and reserves space *before* each write, so a write that
  would pass the limit is refused and never reaches the disk.
"""

from __future__ import annotations

import errno
import os

from .quota import GRANT, TEMP_PREFIX, TEMP_SUFFIX, Ledger, QuotaExceeded, QuotaWait, human, new_token

MODES = ("atomic", "atomic-resume", "standard")
_SPLICE = hasattr(os, "splice")  # Linux, Python 3.10+
_NO_SPLICE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}  # the target can't be spliced into

# Why a transfer ended without success
QUOTA, BROKEN, ERROR = "quota", "broken", "error"


class Upload:
    """A file-like object pyftpdlib's data channel writes into."""

    def __init__(self, target: str, name: str, mode: str, upload_mode: str, ledger: Ledger | None,
                 placeholder: bool = False) -> None:
        """``ledger`` journals the upload (and charges it, if the tree is limited);
        ``placeholder``: ``target`` is an empty file made only to hold a unique
        name (STOU), to be removed if the upload fails."""
        if upload_mode not in MODES:
            raise ValueError(f"unknown upload mode {upload_mode!r}")
        self.name = name  # what pyftpdlib logs and passes to callbacks
        self.target = target
        self.ledger = ledger
        self.upload_mode = upload_mode
        self.token = new_token()
        self.closed = False
        self._placeholder = os.lstat(target).st_ino if placeholder else None
        exists = os.path.isfile(target) and not placeholder
        if mode.startswith("r") and not exists:
            raise FileNotFoundError(2, "No such file or directory", target)
        self.old = os.path.getsize(target) if exists else 0
        self._append = mode.startswith("a")
        self._in_place = upload_mode == "standard" or (exists and mode[0] in "ar")
        self._start = self.old if self._append and self._in_place else 0
        self._written = 0
        self._granted = 0
        self._spliceable = _SPLICE
        self._held = b""  # a chunk waiting for room (QuotaWait)
        self._limited = ledger is not None and ledger.limited
        if self._in_place:
            self.temp = None
            self._file = open(target, mode if "b" in mode else mode + "b", buffering=0)
            crash = "keep" if upload_mode != "atomic" else "truncate"
        else:
            folder, base = os.path.split(target)
            self.temp = os.path.join(folder, f"{TEMP_PREFIX}{self.token}.{base[:64]}{TEMP_SUFFIX}")
            self._file = open(self.temp, "xb", buffering=0)
            crash = "keep-new" if upload_mode == "atomic-resume" and not exists else "delete"
        # What crash recovery needs; journaled with the first write (an
        # upload that never wrote a byte leaves at most an empty temporary).
        self._entry = dict(crash=crash, target=target, old=self.old, temp=self.temp,
                           ino=os.fstat(self._file.fileno()).st_ino)
        self._journaled = False
        self._usage = None

    # --- what pyftpdlib calls

    def write(self, data: bytes) -> int:
        size = len(data)
        try:
            self._make_room(size)
        except QuotaWait:
            self._held = bytes(data)
            raise
        self._write_all(data)
        self._written += size
        return size

    def _write_all(self, data) -> None:
        view = memoryview(data)
        while view:  # unbuffered: a short write is possible
            view = view[self._file.write(view):]

    @property
    def can_splice(self) -> bool:
        """True if ``write_from_pipe`` may be used (Linux can't splice into O_APPEND)."""
        return self._spliceable and not (self._append and self._in_place)

    def write_from_pipe(self, pipe: int, size: int) -> int:
        """Write the ``size`` bytes waiting in ``pipe`` (moved there from the
        socket by ``os.splice``) without copying them through user memory.

        The pipe is always left empty: on QuotaWait its bytes are held like
        a refused ``write``'s, on any other failure they are dropped.
        """
        try:
            self._make_room(size)
        except QuotaWait:
            self._held = _read_exactly(pipe, size)
            raise
        except BaseException:
            _read_exactly(pipe, size)
            raise
        left = size
        try:
            while left:
                left -= os.splice(pipe, self._file.fileno(), left)
        except OSError as err:
            if err.errno not in _NO_SPLICE:
                raise
            self._spliceable = False  # a filesystem without splice: copy, from now on
            data = _read_exactly(pipe, left)
            left = 0
            self._write_all(data)
        finally:
            if left:  # a write error: the rest must not reach the next upload
                _read_exactly(pipe, left)
        self._written += size
        return size

    def _make_room(self, size: int) -> None:
        """Reserve quota for ``size`` more bytes (journaling the upload first)."""
        if self._limited:
            need = self._final_size(self._written + size) - self.old
            if need > self._granted:
                try:  # ahead by what was written so far: few ledger updates for big files
                    self._granted = self.ledger.reserve(self.token, need, max(GRANT, self._written),
                                                        None if self._journaled else self._entry)
                finally:
                    self._journaled = True
        elif self.ledger is not None and not self._journaled:
            self.ledger.journal(self.token, self._entry)
            self._journaled = True

    def resume(self) -> None:
        """Write the chunk held back by QuotaWait (which may be raised again)."""
        held, self._held = self._held, b""
        if held:
            self.write(held)

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._file.seek(offset, whence)
        if not self._append:
            self._start = position
        return position

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        """Closed without a verdict (a handler that doesn't call finish): keep."""
        if not self.closed:
            self.finish(True)

    # --- the end

    def _final_size(self, written: int) -> int:
        if self._in_place and not self._append and self.upload_mode != "standard":
            return max(self.old, self._start + written)  # REST + STOR
        return self._start + written

    def finish(self, ok: bool, why: str = ERROR) -> str:
        """Commit or roll back; returns a note for the reply ("" if none).

        Raises OSError or QuotaExceeded if a successful transfer can't be
        committed (then nothing changed).
        """
        if self.closed:
            return ""
        self.closed = True
        self._file.close()
        keep = ok or self.upload_mode == "standard" or (self.upload_mode == "atomic-resume" and why == BROKEN)
        try:
            if self._in_place:
                if not keep:
                    os.truncate(self.target, self.old)
                self._charge(None, None)
            elif keep and (ok or not os.path.lexists(self.target) or self._placeholder):
                self._charge(self.temp, lambda: os.replace(self.temp, self.target))
            else:
                self._discard()
                self._drop_placeholder()
        except BaseException:
            self._discard()
            raise
        return self._note() if ok else ""

    def _charge(self, gone: str | None, action) -> None:
        """Charge the growth: the new size minus what it replaces."""
        if gone:  # a temporary about to replace the target
            delta = os.path.getsize(gone) - (os.path.getsize(self.target) if os.path.isfile(self.target) else 0)
        else:  # written in place
            delta = (os.path.getsize(self.target) if os.path.lexists(self.target) else 0) - self.old
        if self.ledger is not None and (self._limited or self._journaled):
            self._usage = self.ledger.finish(self.token, delta, action)
        elif action is not None:
            action()

    def __del__(self) -> None:
        # Dropped without a verdict (the session vanished first): roll back.
        if not getattr(self, "closed", True):
            try:
                self.finish(False, BROKEN)
            except Exception:
                pass

    def _drop_placeholder(self) -> None:
        try:
            st = os.lstat(self.target)
            if st.st_ino == self._placeholder and st.st_size == 0:
                os.remove(self.target)
        except OSError:
            pass

    def _discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self.temp and os.path.lexists(self.temp):
            try:
                os.remove(self.temp)
            except OSError:
                pass
        if self.ledger is not None and self._journaled:
            try:
                self.ledger.finish(self.token, 0)
            except OSError:
                pass

    def _note(self) -> str:
        usage = self._usage
        if not self._limited or usage is None or usage.limit is None:
            return ""
        return f"{human(usage.free)} free of {human(usage.limit)} quota"


def _read_exactly(fd: int, size: int) -> bytes:
    """Read ``size`` bytes that are known to be waiting in a pipe."""
    parts = []
    while size > 0:
        try:
            part = os.read(fd, size)
        except BlockingIOError:
            break
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


__all__ = ["Upload", "MODES", "QUOTA", "BROKEN", "ERROR", "QuotaExceeded"]
