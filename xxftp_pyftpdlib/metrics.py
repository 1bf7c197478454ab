"""What the server counts, under which names, and how the figures of every
process become one.

Rules that live here:

- Every figure is named here, once, in Prometheus' conventions with the
  prefix ``xxftpd_``: counters end in ``_total``, sizes in ``_bytes``,
  times in ``_seconds``; a gauge says what is there now.
- Counting costs a few increments per event of a session (a connection,
  a login, a finished transfer), never anything per data chunk: a
  transfer is counted once, when it ends, with its bytes and duration.
- Metrics off (the default) is ``OFF``: the same methods, doing nothing,
  so the handler calls them without asking.
- With several processes serving (``--workers``, ``multi-proc``) each
  process writes its figures to memory-mapped files in one folder
  (prometheus_client's multiprocess mode) and a scrape adds them up:
  counters and histograms over every process that ever served, gauges
  ("now") over the live ones only. The files of a process that died
  without a word (a crash, SIGKILL) stop counting as live at the next
  scrape; the totals of a process that has ended are folded into one
  file (``counter_0.db``, ``histogram_0.db``), so a ``multi-proc``
  server, a process per connection, keeps a few files, not three per
  connection it ever served.
- Figures read at scrape time (quotas, bans, the build) are collectors
  here; they are read in the process that serves the scrape, never on
  the FTP loop.

This module knows nothing of FTP commands, sockets or HTTP: the handler
says what happened, the status server (``statuspage``) asks for the text.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import platform
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future

__all__ = ["OFF", "Recorder", "Metrics", "REQUIREMENT"]

log = logging.getLogger("xxftpd")

REQUIREMENT = "prometheus_client"  # the extra ``xxftpd[metrics]``

TRANSFER_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
CHECK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Recorder:
    """The events a session reports; this base counts nothing (metrics off)."""

    enabled = False

    def connection(self) -> None:
        """A client connected (refused or not)."""

    def refused(self, reason: str) -> None:
        """A connection was refused before its greeting: ``reason`` is one
        of ``address`` (--allow-from/--deny-from), ``banned``, ``limit``
        (the admission table's limits), ``max_cons``."""

    def opened(self) -> None:
        """A greeted connection is served by this process from now on."""

    def closed(self) -> None:
        """A connection that ``opened`` here has closed."""

    def login(self, ok: bool, password: str) -> None:
        """A login's verdict; ``password``: the kind of password file
        (``none``, ``md5``, ``scrypt``, ``unknown``, ``no_user``, ``error``)."""

    def session_started(self, user: str) -> None:
        """``user`` is logged in on a session of this process."""

    def session_ended(self, user: str) -> None:
        """A session of ``user`` logged out or closed."""

    def login_check(self, future: Future) -> None:
        """A password check was queued; it is done when ``future`` is."""

    def transfer(self, upload: bool, completed: bool, size: int, seconds: float, code: int) -> None:
        """An upload or download ended; ``code``: its final reply's."""

    def listing(self, command: str) -> None:
        """A listing (LIST, NLST, MLSD) was started."""

    def tls_started(self) -> None:
        """A control connection finished its TLS handshake."""

    def tls_ended(self) -> None:
        """A control connection that had TLS closed."""


OFF = Recorder()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, ended but not yet
    reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[:1] not in ([b"Z"], [b"X"])
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel (a zombie counts as running)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")
_TOTALS_FILE = re.compile(r"(counter|histogram)_(\d+)\.db$")


class Metrics(Recorder):
    """The figures of one server, in one process or (``shared``) in all
    the processes forked from this one.

    ``quotas``: what lists the limited trees at each scrape (a
    ``quotaview.QuotaView``: ``trees()`` gives each tree's ``user``,
    ``tree``, ``limit`` and ``usage``); ``bans`` (set later): the server's
    ban list, if it bans.
    """

    enabled = True

    def __init__(self, shared: bool = False, quotas=None) -> None:
        import prometheus_client
        from prometheus_client import values
        from prometheus_client.registry import CollectorRegistry

        try:
            prometheus_client.disable_created_metrics()
        except AttributeError:  # pragma: no cover - older clients
            pass
        self.folder: str | None = None
        self._owner = os.getpid()
        if shared:
            # Each process writes its own files here; a scrape reads them all.
            self.folder = tempfile.mkdtemp(prefix="xxftpd-metrics-")
            atexit.register(self.close)  # also when the server never starts (a port in use)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.folder
            values.ValueClass = values.MultiProcessValue()
        self.quotas = quotas
        self.bans = None  # set by the server when it bans
        self.registry = CollectorRegistry(auto_describe=True)
        own = None if shared else self.registry
        C, G, H = prometheus_client.Counter, prometheus_client.Gauge, prometheus_client.Histogram

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()):
            return G(name, doc, labels, registry=own, multiprocess_mode="livesum")

        p = "xxftpd_"
        self.connections = C(p + "connections", "Client connections accepted", registry=own)
        self.open_connections = gauge(p + "open_connections", "Client connections open now")
        self.refusals = C(p + "connections_refused", "Connections refused before the greeting, by reason",
                          ("reason",), registry=own)
        self.logins = C(p + "logins", "Login verdicts, by result and by kind of password file",
                        ("result", "password"), registry=own)
        self.sessions = gauge(p + "sessions", "Logged-in sessions now, by user", ("user",))
        self.checks = gauge(p + "login_checks_in_progress", "Password checks queued or running now")
        self.check_time = H(p + "login_check_duration_seconds", "Time from queueing a password check to its verdict",
                            buckets=CHECK_BUCKETS, registry=own)
        self.listings = C(p + "listings", "Folder listings started, by command", ("command",), registry=own)
        self.tls_open = gauge(p + "tls_sessions", "Control connections protected by TLS now")
        self.tls_total = C(p + "tls_handshakes", "TLS handshakes completed on control connections", registry=own)
        self.directions = {}
        for upload, word in ((True, "upload"), (False, "download")):
            self.directions[upload] = (
                C(p + word + "s", f"{word.capitalize()}s ended (completed or not)", registry=own),
                C(p + word + "_bytes", f"Bytes {word}ed", registry=own),
                C(p + word + "_errors", f"{word.capitalize()}s that failed, by reply code", ("code",), registry=own),
                H(p + word + "_duration_seconds", f"Duration of {word}s", buckets=TRANSFER_BUCKETS, registry=own),
            )
        if shared:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self.registry, self.folder)
        self.registry.register(_ScrapeTime(self))
        self._folding = threading.Lock()
        self._folded: dict[str, object] = {}  # kind -> the MmapedDict of ended processes' totals

    # --- the events (see Recorder)

    def connection(self) -> None:
        self.connections.inc()

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def opened(self) -> None:
        self.open_connections.inc()

    def closed(self) -> None:
        self.open_connections.dec()

    def login(self, ok: bool, password: str) -> None:
        self.logins.labels("ok" if ok else "failed", password).inc()

    def session_started(self, user: str) -> None:
        self.sessions.labels(user).inc()

    def session_ended(self, user: str) -> None:
        self.sessions.labels(user).dec()

    def login_check(self, future: Future) -> None:
        self.checks.inc()
        start = time.monotonic()

        def done(_: Future) -> None:  # in the check's thread (or at once): the gauge locks
            self.checks.dec()
            self.check_time.observe(time.monotonic() - start)

        future.add_done_callback(done)

    def transfer(self, upload: bool, completed: bool, size: int, seconds: float, code: int) -> None:
        count, moved, errors, duration = self.directions[upload]
        count.inc()
        if size:
            moved.inc(size)
        if not completed:
            errors.labels(str(code)).inc()
        duration.observe(seconds)

    def listing(self, command: str) -> None:
        self.listings.labels(command).inc()

    def tls_started(self) -> None:
        self.tls_total.inc()
        self.tls_open.inc()

    def tls_ended(self) -> None:
        self.tls_open.dec()

    # --- scrapes

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self.folder is not None:
            with self._folding:  # scrapes may come at once
                self._forget_dead()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _forget_dead(self) -> None:
        """Gauges of processes that are gone stop counting ("now" is the
        live processes' sum); their totals are folded into the ``_0`` files."""
        from prometheus_client import multiprocess
        from prometheus_client.mmap_dict import MmapedDict

        for path in glob.glob(os.path.join(self.folder, "*.db")):
            live, totals = _LIVE_FILE.search(path), _TOTALS_FILE.search(path)
            if live and not _alive(int(live.group(1))):
                try:
                    multiprocess.mark_process_dead(int(live.group(1)), self.folder)
                except OSError:
                    pass
            elif totals and totals.group(2) != "0" and not _alive(int(totals.group(2))):
                kind = totals.group(1)
                folded = self._folded.get(kind)
                if folded is None:
                    folded = self._folded[kind] = MmapedDict(os.path.join(self.folder, f"{kind}_0.db"))
                try:
                    for key, value, _, _ in MmapedDict.read_all_values_from_file(path):
                        folded.write_value(key, folded.read_value(key)[0] + value, 0.0)
                    os.remove(path)
                except OSError as err:
                    log.debug("metrics of an ended process not folded: %s", err)

    def close(self) -> None:
        """Remove the processes' files (by the process that made them)."""
        if self.folder is not None and os.getpid() == self._owner:
            for folded in self._folded.values():
                folded.close()
            shutil.rmtree(self.folder, ignore_errors=True)


class _ScrapeTime:
    """The figures read when scraped: build, bans now, quota trees."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []  # read at scrape time only: nothing to check at registration

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from . import __version__

        import pyftpdlib

        info = GaugeMetricFamily("xxftpd_build_info", "The running xxftpd, its pyftpdlib and Python",
                                 labels=["version", "pyftpdlib", "python"])
        info.add_metric([__version__, getattr(pyftpdlib, "__ver__", "?"), platform.python_version()], 1)
        yield info
        bans = self.metrics.bans
        if bans is not None:
            banned = GaugeMetricFamily("xxftpd_banned_addresses", "Client addresses banned now")
            try:
                banned.add_metric([], bans.banned_now())
            except Exception as err:  # a manager that is gone (stopping): no figure, no broken scrape
                log.debug("bans not read: %s", err)
            else:
                yield banned
        if self.metrics.quotas is None:
            return
        names = ("limit", "used", "reserved")
        docs = ("Byte limit of a quota tree", "Bytes committed in a quota tree",
                "Bytes held ahead by running uploads in a quota tree")
        families = [GaugeMetricFamily(f"xxftpd_quota_{n}_bytes", d, labels=["user", "tree"]) for n, d in zip(names, docs)]
        for view in self.metrics.quotas.trees():
            labels = [view.user, view.tree]
            if view.limit is not None:
                families[0].add_metric(labels, view.limit)
            if view.usage is not None:
                families[1].add_metric(labels, view.usage.used)
                families[2].add_metric(labels, view.usage.reserved)
        yield from families
