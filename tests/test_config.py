"""The .xxftp parsers and the stat-validated cache, on their own."""

from __future__ import annotations

import logging
import os

from xxftp_pyftpdlib.config import ConfigStore, parse_permission, parse_size, parse_virtual
from xxftp_pyftpdlib.permissions import FULL, NONE, Action, Permission


def test_permission_words():
    assert Permission.parse("read, Write ,modify")[0] == FULL
    perm, unknown = Permission.parse("read,wirte")
    assert perm.words == {"read"} and unknown == ["wirte"]
    assert Permission.parse("none")[0] == NONE
    assert FULL.allows(Action.OVERWRITE) and not Permission.parse("write")[0].allows(Action.OVERWRITE)
    assert Permission.parse("write")[0].missing(Action.OVERWRITE) == ["modify"]


def test_parse_permission_file():
    parsed = parse_permission("# comment\n\nread,fly\n", "p")
    assert parsed.value.words == {"read"}
    assert [str(p) for p in parsed.problems] == ["p:3: unknown permission word 'fly' ignored"]
    assert parse_permission("", "p").value == NONE


def test_parse_virtual_lines():
    text = "a $root/x read\nb rel write\nbad\nc /abs read,bogus\n.d /x read\na /y read\ne/f /x read\n"
    parsed = parse_virtual(text, "v", "/srv/root/alice", "/srv/root")
    assert {n: m.target for n, m in parsed.value.items()} == {"a": "/srv/root/x", "b": "/srv/root/alice/rel"}
    assert [p.line for p in parsed.problems] == [3, 4, 5, 6, 7]


def test_parse_size():
    assert parse_size("1048576\n", "s").value == 1048576
    assert parse_size("512K", "s").value == 512 * 1024
    assert parse_size("10m", "s").value == 10 * 1024**2
    assert parse_size("2G", "s").value == 2 * 1024**3
    assert parse_size("", "s").value == 0
    assert parse_size("lots", "s").value is None
    assert parse_size("-5", "s").value is None


def test_cache_reparses_only_changed_files(tmp_path, caplog):
    folder = tmp_path / "home"
    (folder / ".xxftp").mkdir(parents=True)
    virtual = folder / ".xxftp/virtual"
    virtual.write_text("a /x read\nbroken\n")
    store = ConfigStore(str(tmp_path))
    caplog.set_level(logging.WARNING, logger="xxftpd.config")
    for _ in range(5):
        assert list(store.mounts(str(folder))) == ["a"]
    assert caplog.text.count("virtual:2:") == 1
    virtual.write_text("a /x read\nb /y read\nbroken again\n")
    os.utime(virtual, ns=(1, 1))  # a new version even within one mtime tick
    assert list(store.mounts(str(folder))) == ["a", "b"]
    assert caplog.text.count("virtual:3:") == 1
    assert store.mounts(str(tmp_path / "nowhere")) == {}
    assert store.permission(str(tmp_path / "nowhere")) == FULL
