"""The data channel: ends each upload with the right verdict and reply.

pyftpdlib's data channel turns every write error into ``426 None`` and
closes the file without saying whether the transfer succeeded. Here the
channel tells the ``Upload`` how the transfer ended (so it commits or
rolls back), answers 552 when a write would pass the quota, 452 when the
disk is full and 451 for other local errors, and adds the space left to
the 226 of an upload into a limited tree.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.handlers import DTPHandler

from .quota import QuotaExceeded
from .uploads import BROKEN, ERROR, QUOTA, Upload

logger = logging.getLogger("pyftpdlib")


def error_reply(err: BaseException) -> str:
    """The reply for an error that stopped or failed an upload."""
    if isinstance(err, QuotaExceeded):
        return f"552 {err}; transfer aborted."
    code = {errno.EDQUOT: 552, errno.ENOSPC: 452, errno.EFBIG: 552}.get(getattr(err, "errno", None), 451)
    why = os.strerror(err.errno) if getattr(err, "errno", None) else str(err)
    return f"{code} {why}; transfer aborted."


class XxftpDTPMixin:
    """Upload verdicts and replies for a pyftpdlib data channel."""

    _why = BROKEN

    def handle_error(self) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, _FileReadWriteError) and err.__cause__ is not None:
            err = err.__cause__
        if isinstance(err, QuotaExceeded) or (isinstance(err, OSError) and self._writing_failed(err)):
            self._why = QUOTA if isinstance(err, QuotaExceeded) else ERROR
            self._resp = (error_reply(err), logger.warning)
            self.close()
            return
        super().handle_error()

    def _writing_failed(self, err: OSError) -> bool:
        # A write error of the file, as opposed to a socket error.
        return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES)

    def close(self) -> None:
        upload = self.file_obj
        if not self._closed and self.receive and isinstance(upload, Upload) and not upload.closed:
            ok = bool(self.transfer_finished)
            try:
                note = upload.finish(ok, ERROR if ok else self._why)
            except (QuotaExceeded, OSError) as err:
                self.transfer_finished = False
                self._resp = (error_reply(err), logger.warning)
            else:
                if ok and note:
                    self._resp = (f"226 Transfer complete; {note}.", logger.debug)
        super().close()


class XxftpDTPHandler(XxftpDTPMixin, DTPHandler):
    """pyftpdlib's DTPHandler with xxftpd upload verdicts."""
