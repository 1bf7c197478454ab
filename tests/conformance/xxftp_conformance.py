"""pytest plugin: run pyftpdlib's own functional suites (FTP and FTPS) against xxftpd's classes.

Loaded with ``-p xxftp_conformance`` by ``tests/conformance/run.sh``, which
fetches the suite from the pyftpdlib sdist of the installed version.

The suite builds every server from names it imports from pyftpdlib:
``tests/__init__.py`` has ``FtpdThreadWrapper.handler = FTPHandler`` and
``reset_server_opts()`` resets options on ``pyftpdlib.handlers.FTPHandler``
and ``DTPHandler``; ``test_functional.py`` subclasses ``FTPHandler`` and
``AbstractedFS``, and after some tests puts ``FTPHandler``, ``DTPHandler``
and ``AbstractedFS`` back on the server's handler class;
``test_functional_ssl.py`` runs the same tests through ``TLS_FTPHandler``
(``TLS_DTPHandler`` for data) with PROT P. So the swap is
done on those module attributes (``SWAPS``), when this plugin is imported:
``-p`` plugins are imported before any conftest or test module of the
suite, so every ``from pyftpdlib... import`` of the suite binds our
classes, and nothing else of pyftpdlib is touched (the throttling tests
keep pyftpdlib's ThrottledDTPHandler: xxftpd has no throttled channel).
The suite keeps its own ``DummyAuthorizer``; its users' home is its
working directory, an empty folder given with ``--suite-home``.

Tests that differ by design are deselected by exact node id from the file
given with ``--expected-differences`` (one ``NODE_ID  reason`` per line);
an entry that matches no collected test is an error, so the list can't go
stale silently.
"""

from __future__ import annotations

import ftplib
import os

import pyftpdlib.filesystems
import pyftpdlib.handlers
import pytest

from xxftp_pyftpdlib.filesystem import XxftpFS
from xxftp_pyftpdlib.handler import XxftpHandler, XxftpTLSHandler

# (module, name, our class): pyftpdlib's classes that the suite gets ours for.
SWAPS = (
    (pyftpdlib.handlers, "FTPHandler", XxftpHandler),
    (pyftpdlib.handlers, "DTPHandler", XxftpHandler.dtp_handler),
    (pyftpdlib.handlers, "TLS_FTPHandler", XxftpTLSHandler),
    (pyftpdlib.handlers, "TLS_DTPHandler", XxftpTLSHandler.dtp_handler),
    (pyftpdlib.filesystems, "AbstractedFS", XxftpFS),
)
for _module, _name, _ours in SWAPS:
    setattr(_module, _name, _ours)

# The suite asserts RFC 959's TYPE A (test_stor_ascii, test_retr_ascii...):
# line ends converted. xxftpd's default moves files byte for byte in any
# TYPE (--ascii-mangling off, like vsftpd); its "on" mode is pyftpdlib's
# conversion, and that is what the suite checks. The default is tested in
# tests/test_ascii_mangling.py.
XxftpHandler.ascii_mangling = XxftpTLSHandler.ascii_mangling = True


# The FTPS suite's client is ftplib, which makes a fresh TLS session for
# each data connection. xxftpd by default requires a PROT P data connection
# to resume the control connection's session (lftp and curl do; ftplib
# answers 522 without this), so the suite's client resumes it, and the
# suite runs against the default.
def _resuming_ntransfercmd(self, cmd, rest=None):
    conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
    if self._prot_p:
        conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
    return conn, size


ftplib.FTP_TLS.ntransfercmd = _resuming_ntransfercmd

# Evidence that logins really ran on our classes, shown in the summary.
_logins = {"fs": 0}
_xxftp_fs_init = XxftpFS.__init__


def _counting_init(self, root, cmd_channel):
    _logins["fs"] += 1
    _xxftp_fs_init(self, root, cmd_channel)


XxftpFS.__init__ = _counting_init


def pytest_addoption(parser):
    parser.addoption(
        "--expected-differences", metavar="FILE", default=None,
        help="file of 'NODE_ID  reason' lines: tests deselected as differing by design",
    )
    parser.addoption(
        "--suite-home", metavar="DIR", default=None,
        help="folder the suite serves and works in (it takes its working directory)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # Runs before the suite's conftest imports tests/__init__.py, which
    # takes HOME = os.getcwd(). pytest itself was started in the suite's
    # root, so node ids in its reports are the ones expected_differences.txt
    # uses.
    home = early_config.known_args_namespace.suite_home
    if home:
        os.chdir(home)


def pytest_configure(config):
    # Marker used by the suite for its xdist scheduling; xdist isn't needed here.
    config.addinivalue_line("markers", "xdist_group(name): pyftpdlib's xdist grouping")
    config._xxftp_expected = _read_expected(config.getoption("expected_differences"))


def _read_expected(path: str | None) -> dict[str, str]:
    expected: dict[str, str] = {}
    if not path:
        return expected
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            node_id, _, reason = line.partition(" ")
            if not reason.strip():
                raise pytest.UsageError(f"{path}:{number}: missing reason for {node_id}")
            if node_id in expected:
                raise pytest.UsageError(f"{path}:{number}: {node_id} listed twice")
            expected[node_id] = reason.strip()
    return expected


def _check_swap(items) -> None:
    """Fail loudly if the suite's modules didn't bind our classes."""
    for module in {item.module for item in items if getattr(item, "module", None)}:
        bound = [(name, getattr(module, name), ours) for _, name, ours in SWAPS if hasattr(module, name)]
        wrapper = getattr(module, "FtpdThreadWrapper", None)
        if wrapper is not None:
            bound.append(("FtpdThreadWrapper.handler", wrapper.handler, XxftpHandler))
        for name, actual, wanted in bound:
            if actual is not wanted:
                raise pytest.UsageError(
                    f"{module.__name__}.{name} is {actual!r}, not {wanted!r}: "
                    "the suite was imported before the swap"
                )


@pytest.hookimpl(tryfirst=True)  # before -k/-m narrow the collection
def pytest_collection_modifyitems(config, items):
    _check_swap(items)
    expected = config._xxftp_expected
    collected = {item.nodeid for item in items}
    stale = sorted(set(expected) - collected)
    whole_files = not any("::" in arg for arg in config.args)
    if stale and whole_files:
        raise pytest.UsageError(
            "expected differences that match no collected test:\n  " + "\n  ".join(stale)
        )
    keep = [item for item in items if item.nodeid not in expected]
    dropped = [item for item in items if item.nodeid in expected]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_report_header(config):
    swaps = ", ".join(
        f"{module.__name__}.{name} -> {ours.__module__}.{ours.__qualname__}" for module, name, ours in SWAPS
    )
    return [
        f"xxftp conformance: {swaps}",
        f"xxftp conformance: {len(config._xxftp_expected)} expected difference(s) deselected",
        f"xxftp conformance: the suite's home (DummyAuthorizer users) is {os.getcwd()}",
    ]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    expected = config._xxftp_expected
    if expected:
        terminalreporter.section("xxftp expected differences (deselected)")
        for node_id, reason in expected.items():
            terminalreporter.write_line(f"{node_id}: {reason}")
    terminalreporter.write_line(f"xxftp conformance: {_logins['fs']} logins served by XxftpFS")
