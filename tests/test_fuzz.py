"""Fuzz targets (hypothesis): every parser of ``.xxftp`` files, the password
formats, and the command layer through a real socket.

Each target runs briefly by default. Longer runs (see fuzz/README.md):

    XXFTPD_FUZZ_EXAMPLES=100000 python3 -m pytest tests/test_fuzz.py
    XXFTPD_FUZZ_SECONDS=3600 python3 -m pytest tests/test_fuzz.py -k command_lines

``XXFTPD_FUZZ_EXAMPLES`` is the number of examples per round (default 300
for the file parsers, 200 for sizes and passwords, 60 for the socket
target); ``XXFTPD_FUZZ_SECONDS`` keeps starting new rounds, with fresh
random seeds, until that many seconds have passed (default: one round);
``XXFTPD_FUZZ_REPORT=path`` writes the number of examples run per target.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from test_hostile_protocol import ProtocolViolation, Raw, snapshot, wait_until
from xxftp_pyftpdlib import XxftpHandler, passwords
from xxftp_pyftpdlib.access import parse_hosts
from xxftp_pyftpdlib.config import Mount, Problem, parse_permission, parse_size, parse_virtual
from xxftp_pyftpdlib.permissions import NONE, WORDS, Permission

EXAMPLES = int(os.environ.get("XXFTPD_FUZZ_EXAMPLES", "0"))
SECONDS = float(os.environ.get("XXFTPD_FUZZ_SECONDS", "0"))
COUNTS: dict[str, int] = {}  # examples run per target, for docs/RELIABILITY.md


def fuzz(default: int):
    """Hypothesis settings of a target: a few examples in CI, many on request."""
    return settings(max_examples=EXAMPLES or default, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


def rounds(target) -> None:
    """Run a @given target once, or again and again for XXFTPD_FUZZ_SECONDS."""
    deadline = time.monotonic() + SECONDS
    while True:
        target()
        if time.monotonic() >= deadline:
            break


def count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    """With XXFTPD_FUZZ_REPORT=path, write how many examples each target ran."""
    yield
    path = os.environ.get("XXFTPD_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(COUNTS, f, indent=1, sort_keys=True)


def content_lines(text: str) -> list[tuple[int, str]]:
    """The documented rule: blank lines and # comments are ignored."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def check_problems(problems, path: str, text: str) -> None:
    last = len(text.splitlines())
    for p in problems:
        assert isinstance(p, Problem) and p.path == path and 0 <= p.line <= last, p
        assert str(p).startswith(f"{path}:{p.line}: ")


# --- text strategies

NASTY = st.sampled_from(["\x00", "\r", "\n", "\r\n", "\t", " ", "#", ",", "$root", "..", "/", ".", "\ufeff",
                         "\u2028", "\x85", "\udcff", "é", "²", "٣", "K", "m", "G", "iB", "b", "0", "9" * 50])
ANY_TEXT = st.text(max_size=400) | st.lists(NASTY | st.text(max_size=8), max_size=60).map("".join)
WORD = st.sampled_from(["read", "write", "modify", "none", "READ", " Write ", "MoDiFy", "", "wirte", "all",
                        "read write", "rw", "ré", "\x00"])
PERMISSION_LINE = st.lists(WORD, max_size=5).map(",".join)


def lines_of(line_strategy):
    junk = st.sampled_from(["", "   ", "# comment", "  # indented comment", "\t"])
    return st.lists(line_strategy | junk, max_size=8).flatmap(
        lambda ls: st.sampled_from(["\n", "\r\n", "\r"]).map(lambda sep: sep.join(ls)))


# --- .xxftp/permission


def known_words(line: str) -> set[str]:
    return {w.strip().lower() for w in line.split(",")} & set(WORDS)


@fuzz(300)
@given(text=ANY_TEXT | lines_of(PERMISSION_LINE))
@example(text="")
@example(text="# only a comment\n\n")
@example(text="read,write\nmodify")
def _permission(text):
    count("parse_permission")
    parsed = parse_permission(text, "home/.xxftp/permission")
    assert isinstance(parsed.value, Permission)
    assert parsed.value.words <= set(WORDS)
    check_problems(parsed.problems, "home/.xxftp/permission", text)
    lines = content_lines(text)
    if not lines:
        assert parsed.value == NONE and parsed.problems  # an empty file gives no rights
    else:
        assert parsed.value.words == known_words(lines[0][1])  # the first content line, unknown words dropped
        assert all(p.line == lines[0][0] for p in parsed.problems)


def test_parse_permission_never_raises():
    rounds(_permission)


# --- .xxftp/virtual

NAME = st.sampled_from(["docs", "a", "team space", ".hidden", ".", "..", "a/b", "ünï", "x\x01", "x\x7f", "-", "$root",
                        "docs"]) | st.text(min_size=1, max_size=10)
TARGET = st.sampled_from(["$root/shared", "rel", "../up", "/abs/path", "$root", "$root/../..", "./x", "//x",
                          "$root$root", "~", "a b"]) | st.text(min_size=1, max_size=12)
MOUNT_LINE = st.tuples(NAME, TARGET, PERMISSION_LINE, st.sampled_from([" ", "\t", "  "])).map(
    lambda t: t[3].join(t[:3])) | st.lists(st.text(max_size=6), max_size=5).map(" ".join)


@fuzz(300)
@given(text=ANY_TEXT | lines_of(MOUNT_LINE))
@example(text="a $root/x read\nb rel write\nbad\nc /abs read,bogus\n.d /x read\na /y read\ne/f /x read\n")
def _virtual(text):
    count("parse_virtual")
    folder, server_root = "/srv/root/alice/sub", "/srv/root"
    parsed = parse_virtual(text, "v", folder, server_root)
    check_problems(parsed.problems, "v", text)
    lines = content_lines(text)
    assert len(parsed.value) + len(parsed.problems) == len(lines)  # every content line: a mount or a problem
    for name, mount in parsed.value.items():
        assert isinstance(mount, Mount) and mount.name == name
        assert name not in (".", "..") and not name.startswith(".") and "/" not in name
        assert not re.search(r"[\x00-\x1f\x7f]", name) and not re.search(r"\s", name)
        assert os.path.isabs(mount.target) and os.path.normpath(mount.target) == mount.target
        assert mount.permission.words <= set(WORDS)
        number = int(mount.source.rsplit(":", 1)[1])
        fields = dict(lines)[number].split()
        assert fields[0] == name and len(fields) == 3
        expected = os.path.normpath(os.path.join(folder, fields[1].replace("$root", server_root)))
        assert mount.target == expected
        assert mount.permission.words == known_words(fields[2]) and not set(
            w.strip().lower() for w in fields[2].split(",") if w.strip()) - set(WORDS) - {"none"}


def test_parse_virtual_never_raises():
    rounds(_virtual)


# --- .xxftp/size

UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
SIZE_LINE = st.tuples(st.text(alphabet="0123456789", min_size=1, max_size=25),
                      st.sampled_from(["", " ", "  "]), st.sampled_from(["", "k", "K", "m", "M", "g", "G"]),
                      st.sampled_from(["", "b", "B", "ib", "iB", "IB"]))


@fuzz(300)
@given(text=ANY_TEXT | lines_of(SIZE_LINE.map("".join)))
@example(text="9" * 5000)  # more digits than int() takes by default
@example(text="1" * 4301 + "K")
def _size_any(text):
    count("parse_size")
    parsed = parse_size(text, "s")
    check_problems(parsed.problems, "s", text)
    assert (parsed.value is None) == bool(parsed.problems)  # invalid: refuse uploads, and say why
    assert parsed.value is None or (isinstance(parsed.value, int) and parsed.value >= 0)
    if not content_lines(text):
        assert parsed.value == 0  # empty: unlimited


@fuzz(200)
@given(parts=SIZE_LINE)
def _size_exact(parts):
    count("parse_size")
    digits, space, unit, suffix = parts
    parsed = parse_size(f"  {digits}{space}{unit}{suffix}\n", "s")
    if len(digits.lstrip("0")) > 20:  # past any disk: refused as invalid, never raised
        assert parsed.value is None and parsed.problems, (parts, parsed)
    else:
        assert parsed.value == int(digits) * UNITS[unit.lower()] and not parsed.problems, (parts, parsed)


def test_parse_size_never_raises():
    rounds(_size_any)


def test_parse_size_values():
    rounds(_size_exact)


# --- .xxftp/hosts

ADDRESS = st.ip_addresses().map(str) | st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(
    lambda t: f"{t[0]}/{t[1]}") | st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}")
HOST_LINE = ADDRESS | st.sampled_from(["10.0.0.0/33", "::1/129", "1.2.3", "localhost", "::ffff:1.2.3.4", "fe80::1%eth0",
                                       "1.2.3.4 # office", "0.0.0.0/0", "::/0", "999.1.1.1", "1" * 60, "-1"])


@fuzz(300)
@given(text=ANY_TEXT | lines_of(HOST_LINE))
def _hosts(text):
    count("parse_hosts")
    parsed = parse_hosts(text, "h")
    check_problems(parsed.problems, "h", text)
    nets, problems = parsed.value, parsed.problems
    assert all(isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) for n in nets)
    meaningful = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    assert len(nets) + len(problems) == len([m for m in meaningful if m])  # each line: a network or a problem
    for p in problems:
        assert meaningful[p.line - 1]


def test_parse_hosts_never_raises():
    rounds(_hosts)


# --- password files

PASSWORD = st.text(max_size=30)
STORED = st.sampled_from(["", "   \n", "md5", "$scrypt$", "$scrypt$ln=14,r=8,p=1$$", "$scrypt$ln=0,r=8,p=1$YQ==$YQ==",
                          "$scrypt$ln=21,r=8,p=1$YQ==$YQ==", "$scrypt$ln=14,r=8,p=1$!!$YQ==",
                          "$scrypt$ln=1,r=1,p=1$YQ$YQ", "$2b$12$abcdefghijklmnopqrstuv", "{SHA}abc"]) | st.text(max_size=120)


@fuzz(200)
@given(stored=STORED, password=PASSWORD)
@example(stored="$scrypt$ln=20,r=32,p=1$c2FsdA==$aGFzaA==", password="x")  # bounds that need > 256 MiB
@example(stored="$scrypt$ln=" + "1" * 5000 + ",r=8,p=1$YQ==$YQ==", password="x")
def _password_any(stored, password):
    count("passwords")
    kind = passwords.kind(stored)
    assert kind in ("md5", "scrypt", "unknown")
    if kind == "scrypt":
        ln, r, p = (int(v) for v in re.search(r"ln=(\d+),r=(\d+),p=(\d+)", stored).groups())
        if ln > 12 and 128 * r * (1 << ln) <= 256 * 1024 * 1024:
            return  # a valid but slow hash: keep each example cheap
    result = passwords.verify(stored, password)
    assert result is True or result is False
    if kind == "unknown":
        assert result is False  # content in no known format matches no password


@fuzz(200)
@given(password=PASSWORD, pad=st.sampled_from(["", " ", "\n", "\r\n", "\t  \n"]), upper=st.booleans(),
       other=PASSWORD)
def _password_md5(password, pad, upper, other):
    count("passwords")
    digest = hashlib.md5(password.encode("utf-8", "surrogateescape")).hexdigest()
    stored = pad + (digest.upper() if upper else digest) + pad
    assert passwords.kind(stored) == "md5"
    assert passwords.verify(stored, password) is True
    assert passwords.verify(stored, other) is (other.encode("utf-8", "surrogateescape") == password.encode(
        "utf-8", "surrogateescape"))


def test_password_kind_and_verify_never_raise():
    rounds(_password_any)


def test_md5_password_files():
    rounds(_password_md5)


def test_scrypt_round_trip():
    stored = passwords.scrypt_hash("pässword")
    assert passwords.kind(stored) == "scrypt"
    assert passwords.verify(stored, "pässword") and not passwords.verify(stored, "password")
    assert passwords.verify("  " + stored + "\n", "pässword")


# --- the command layer, through a real socket

COMMANDS = sorted(XxftpHandler.proto_cmds)
COMPONENT = st.sampled_from(["", ".", "..", "...", ".xxftp", "password", "size", "virtual", "docs", "team", "sub",
                             "own.bin", "new.bin", "a\x00b", "a\rb", "\udcff", "é", "*", "-la", "~", "%2e%2e", " ",
                             "A" * 300])
PATH = st.tuples(st.booleans(), st.lists(COMPONENT, max_size=6)).map(lambda t: ("/" if t[0] else "") + "/".join(t[1]))
NUMBER = st.integers(-2, 2**70).map(str) | st.sampled_from(["²", "1e9", "0x10", "١٢٣", "+5", " 5", "5 "])
HOSTPORT = st.tuples(*[st.integers(-1, 300)] * 6).map(lambda t: ",".join(map(str, t)))
EPRT = st.tuples(st.sampled_from(["|", "!", "x", ""]), st.sampled_from(["1", "2", "3", ""]),
                 st.sampled_from(["127.0.0.1", "::1", "192.0.2.1", "0.0.0.0", "", "localhost"]),
                 st.integers(-1, 70000)).map(lambda t: f"{t[0]}{t[1]}{t[0]}{t[2]}{t[0]}{t[3]}{t[0]}")
ARG = st.one_of(st.just(""), PATH, NUMBER, HOSTPORT, EPRT, st.text(max_size=40),
                st.tuples(PATH, PATH).map(" ".join), st.tuples(NUMBER, PATH).map(" ".join))
RAW_LINE = st.binary(max_size=60).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r"))
LINE = (st.tuples(st.sampled_from(COMMANDS) | st.sampled_from(["FOO", "", "SITE FOO", "XQUITX", "noop"]), ARG).map(
    lambda t: (f"{t[0]} {t[1]}" if t[1] else t[0]).encode("utf-8", "surrogateescape")) | RAW_LINE).filter(
    lambda line: len(line) < 2000)  # longer lines are answered in pieces (test_hostile_protocol covers them)


@pytest.fixture
def command_world(tree, start_server, caplog):
    home = tree.user("alice", password="pw", size="1M",
                     virtual="docs $root/shared-docs read\nteam $root/team-space read,write,modify\n")
    (home / "sub").mkdir()
    (home / "own.bin").write_bytes(os.urandom(4096))
    tree.file("shared-docs/manual.txt", "read me")
    tree.xxftp(tree.folder("team-space"), "size", "256K\n")
    tree.file("outside.txt", "outside")
    tree.user("bob")
    tree.file("bob/known.txt", "bob's")
    skip = [home, tree.root / "team-space"]
    before = snapshot(tree.root, skip)
    caplog.set_level(logging.WARNING)
    srv = start_server(tree.root, timeout=30)
    return srv, tree, home, skip, before, caplog


def play(port: int, lines: list[bytes], login: bool) -> None:
    """Send the lines; each must get a proper reply, or a close after QUIT."""
    raw = Raw(port, timeout=15)
    may_close = False
    try:
        if login:
            raw.login("alice", "pw")
        for line in lines:
            try:
                reply = raw.cmd(line)
            except ProtocolViolation as err:
                raise AssertionError(f"{line!r}: {err}") from None
            command = line.split(b" ")[0].upper()
            if reply is None:
                assert may_close or command[-4:] == b"QUIT", f"{line!r}: the server closed the session"
                return
            assert b"Traceback" not in reply.text, (line, reply)
            if command[-4:] == b"QUIT" and reply.code == 221:
                assert raw.at_eof(), f"{line!r}: 221 but the session stayed open"
                return
            if reply.code == 421 or b"Disconnecting" in reply.text:  # e.g. too many failed logins
                may_close = True
            if reply.code < 200:  # a transfer waits for a data connection that will never come
                return
    finally:
        raw.close()


def test_command_lines(command_world):
    srv, tree, home, skip, before, caplog = command_world

    @fuzz(60)
    @given(login=st.booleans(), lines=st.lists(LINE, min_size=1, max_size=12))
    def target(login, lines):
        count("command_lines")
        play(srv.port, lines, login)
        probe = Raw(srv.port, timeout=15)  # the server keeps serving
        assert probe.greeting.code == 220
        probe.close()

    rounds(target)
    raw = Raw(srv.port)
    raw.login("alice", "pw")
    assert raw.ok("NOOP", 200)
    assert raw.cmd("PORT 192,0,2,1,39,16").code == 501  # logged as a warning: the log is really watched
    raw.close()
    assert wait_until(lambda: any("foreign address" in r.getMessage() for r in caplog.records), 5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or "Traceback" in r.getMessage()]
    assert errors == [], "\n".join(r.getMessage() for r in errors[:5])
    assert snapshot(tree.root, skip) == before, "something outside alice's home changed"
