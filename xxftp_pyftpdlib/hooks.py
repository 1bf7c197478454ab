"""Event hooks: ``--on-upload``, ``--on-login`` and ``--on-delete`` run a command.

Rules that live here:

- A hook never holds up the IO loop nor changes a reply: ``submit`` only
  puts the run in a bounded queue (``QUEUE_SIZE`` runs waiting); when the
  queue is full the run is dropped with one warning.
- At most ``concurrency`` hooks run at once in a process: that many
  threads of the runner take the runs from the queue, in order. The
  threads start at the first run in each process, so each ``--workers``
  worker (and each connection's process with ``multi-proc``) has its own
  queue and bound.
- A command is split like a shell line (``shlex``) when the server
  starts, and run without a shell, with the event's argument appended
  (``EVENTS``), stdin from ``/dev/null``, as the server's user, in a
  process group of its own. Its environment is ``PATH`` and the
  ``XXFTPD_`` variables of the event, nothing else: never the server's
  secrets.
- A run that outlives ``timeout`` seconds has its process group killed
  (SIGKILL). A run that can't start, exits non-zero, dies of a signal or
  is killed at its timeout is one warning line; its output (stdout and
  stderr, the first ``OUTPUT_LIMIT`` bytes kept) is logged at debug.
- A hook still running when the server stops is left to end on its own
  (under systemd, stopping the unit ends its control group, hooks too).
  A connection's own process (``multi-proc``) waits for its runs
  (``drain``) before it ends.

What this module must not know: FTP, sessions, pyftpdlib, uploads.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass

from .jsonlog import fields

__all__ = ["EVENTS", "HookRunner", "QUEUE_SIZE", "OUTPUT_LIMIT", "parse_command"]

log = logging.getLogger("xxftpd.hooks")

CONCURRENCY = 4  # runs at once in a process (--hook-concurrency)
TIMEOUT = 60  # seconds before a run's process group is killed (--hook-timeout)
QUEUE_SIZE = 1000  # runs waiting in a process; more are dropped (and logged)
OUTPUT_LIMIT = 4096  # bytes of a run's output kept for the debug log
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# event -> (what its argument is, its XXFTPD_ variables besides XXFTPD_EVENT);
# its flag is --on-EVENT (option on_EVENT)
EVENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "upload": ("PATH: the real path of each committed upload", ("USER", "CLIENT", "FTP_PATH", "SIZE", "SHA256")),
    "login": ("USER: the user name, after each login", ("USER", "CLIENT")),
    "delete": ("PATH: the real path of each deleted file", ("USER", "CLIENT", "FTP_PATH")),
}


def parse_command(text: str) -> list[str]:
    """A hook's command as an argument list; ValueError says what is wrong."""
    try:
        argv = shlex.split(text)
    except ValueError as err:
        raise ValueError(f"{text!r}: {err}") from None
    if not argv:
        raise ValueError("an empty command")
    if shutil.which(argv[0]) is None:
        raise ValueError(f"{argv[0]!r}: not found or not executable")
    return argv


@dataclass(frozen=True)
class Run:
    event: str
    argv: list[str]
    env: dict[str, str]


class HookRunner:
    """The hooks of one server (see the module's rules)."""

    def __init__(self, commands: dict[str, list[str]], concurrency: int = CONCURRENCY, timeout: float = TIMEOUT,
                 queue_size: int = QUEUE_SIZE, output_limit: int = OUTPUT_LIMIT) -> None:
        unknown = set(commands) - set(EVENTS)
        if unknown:
            raise ValueError(f"unknown hook event(s): {', '.join(sorted(unknown))}")
        if concurrency < 1:
            raise ValueError("hook concurrency must be at least 1")
        self.commands = commands
        self.concurrency = concurrency
        self.timeout = timeout
        self.queue_size = queue_size
        self.output_limit = output_limit
        self._pid: int | None = None
        self._queue: queue.Queue | None = None
        self._start_lock = threading.Lock()
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: me() is not None and me()._forked())

    def wants(self, event: str) -> bool:
        return event in self.commands

    def submit(self, event: str, argument: str, **variables: str | int | None) -> bool:
        """Queue a run of ``event``'s hook (if there is one); never blocks.
        ``variables`` become ``XXFTPD_<NAME>`` (None: left out). False if
        there is no such hook, or the queue is full or its threads can't
        start (logged)."""
        argv = self.commands.get(event)
        if argv is None:
            return False
        env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "XXFTPD_EVENT": event}
        for name, value in variables.items():
            if value is not None:
                env[f"XXFTPD_{name}"] = _clean(str(value))
        try:
            self._queue_here().put_nowait(Run(event, [*argv, _clean(argument)], env))
        except RuntimeError as err:  # no thread to be had: the run is lost, never the caller's command
            log.warning("hook %s for %s dropped: cannot start its threads: %s", event, argument, err,
                        extra=fields(event="hook", hook=event, argument=argument, status="dropped"))
            return False
        except queue.Full:
            log.warning("hook %s for %s dropped: %d runs already waiting", event, argument, self.queue_size,
                        extra=fields(event="hook", hook=event, argument=argument, status="dropped"))
            return False
        return True

    # --- the threads

    def _forked(self) -> None:
        """In a forked child: no thread of the parent runs here."""
        self._start_lock = threading.Lock()
        self._pid = self._queue = None

    def _queue_here(self) -> queue.Queue:
        if self._queue is None or self._pid != os.getpid():
            with self._start_lock:
                if self._queue is None or self._pid != os.getpid():
                    runs: queue.Queue = queue.Queue(self.queue_size)
                    for number in range(self.concurrency):
                        threading.Thread(target=self._work, args=(runs,), name=f"xxftpd-hook-{number}",
                                         daemon=True).start()
                    self._queue, self._pid = runs, os.getpid()
        return self._queue

    def _work(self, runs: queue.Queue) -> None:
        while True:
            run = runs.get()
            try:
                self.run(run)
            except Exception:  # never lose a thread of the bound
                log.exception("hook %s failed", run.event)
            finally:
                runs.task_done()

    def drain(self) -> None:
        """Wait until every run this process queued has ended (each is
        bounded by the timeout)."""
        runs = self._queue
        if runs is not None and self._pid == os.getpid():
            runs.join()

    # --- one run

    def run(self, run: Run) -> int | None:
        """Run one hook to its end or timeout; its exit status (None: it did
        not start or was killed at its timeout)."""
        argument = run.argv[-1]
        info = dict(event="hook", hook=run.event, argument=argument, program=run.argv[0])
        started = time.monotonic()
        try:
            proc = subprocess.Popen(run.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=run.env, close_fds=True,
                                    start_new_session=True)
        except OSError as err:
            log.warning("hook %s: cannot start %s: %s", run.event, run.argv[0], err.strerror or err,
                        extra=fields(status="cannot start", **info))
            return None
        with proc:
            output, timed_out = self._collect(proc, started + self.timeout)
            seconds = round(time.monotonic() - started, 3)
            if output:
                log.debug("hook %s output for %s: %s", run.event, argument,
                          output.decode("utf-8", "replace"), extra=fields(seconds=seconds, **info))
            if timed_out:
                log.warning("hook %s for %s timed out after %g s: process group killed", run.event, argument,
                            self.timeout, extra=fields(status="timeout", seconds=seconds, **info))
                return None
            status = proc.returncode
        if status:
            how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
            log.warning("hook %s for %s %s", run.event, argument, how,
                        extra=fields(status=status, seconds=seconds, **info))
        else:
            log.debug("hook %s for %s done in %g s", run.event, argument, seconds,
                      extra=fields(status=0, seconds=seconds, **info))
        return status

    def _collect(self, proc: subprocess.Popen, deadline: float) -> tuple[bytes, bool]:
        """Read the output (keeping the first ``output_limit`` bytes) until
        the process ends, or kill its group at ``deadline``; (output,
        whether it was killed). A process that ends while a child of its
        own still holds the output open is done: what is there is read."""
        kept = bytearray()
        fd = proc.stdout.fileno()
        open_ = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_group(proc)
                return bytes(kept), True
            if open_:
                if select.select([fd], [], [], min(left, 0.1))[0]:
                    open_ = self._read(fd, kept)
            else:
                try:
                    proc.wait(timeout=min(left, 0.1))
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is not None:
                for _ in range(16):  # what it wrote before it ended (a child of its own may write on)
                    if not (open_ and select.select([fd], [], [], 0)[0]):
                        break
                    open_ = self._read(fd, kept)
                return bytes(kept), False

    def _read(self, fd: int, kept: bytearray) -> bool:
        """Read a chunk of output, keeping what fits; False at its end."""
        chunk = os.read(fd, 65536)
        if len(kept) < self.output_limit:
            kept += chunk[: self.output_limit - len(kept)]
        return bool(chunk)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _clean(text: str) -> str:
    return text.replace("\0", "")
