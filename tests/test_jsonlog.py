"""--log-format json: every line the real server writes is one JSON object,
and the records of logins, commands and transfers carry their fields."""

from __future__ import annotations

import ftplib
import json
import logging
import sys

import pytest

from conftest import download, listing, start_logged, stop_logged, upload
from xxftp_pyftpdlib.jsonlog import FIELDS, JsonFormatter, fields


def _records(text: str) -> list[dict]:
    lines = text.splitlines()
    assert lines
    return [json.loads(line) for line in lines]  # each line alone is valid JSON


def _upload_once(root, *flags: str) -> str:
    """A real server logs alice's login and upload of /a.bin (3 bytes): its log."""
    proc, port = start_logged(root, *flags)
    try:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=10)
        ftp.login("alice", "pw")
        upload(ftp, "/a.bin", b"abc")
        ftp.quit()
    finally:
        text = stop_logged(proc)
    return text


@pytest.mark.parametrize("level", ["info", "debug"])


def test_every_line_is_json_with_fields(tree, level):
    tree.user("alice", password="pw")
    tree.file("alice/hello.txt", b"hello")
    proc, port = start_logged(tree.root, "--log-format", "json", "--log-level", level)
    try:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=10)
        ftp.login("alice", "pw")
        assert listing(ftp)
        upload(ftp, "/up.bin", b"x" * 1234)
        assert download(ftp, "/hello.txt") == b"hello"
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.delete("/missing.txt")  # a refused command
        with pytest.raises(ftplib.error_perm, match="^500"):
            ftp.sendcmd("BOGUS \u00e9\x01")
        ftp.quit()
        bad = ftplib.FTP()
        bad.connect("127.0.0.1", port, timeout=10)
        with pytest.raises(ftplib.error_perm, match="^530"):
            bad.login("alice", "Wr0ngS3cret")
        bad.close()
    finally:
        text = stop_logged(proc)
    records = _records(text)
    assert "Wr0ngS3cret" not in text  # a password is never logged, in any field
    for record in records:
        assert {"time", "level", "logger", "event", "message"} <= record.keys(), record
        assert record["time"].endswith("Z") and record["level"] in ("debug", "info", "warning", "error")
        assert None not in record.values(), record  # absent fields are left out
    transfers = {r["command"]: r for r in records if r["event"] == "transfer"}
    assert set(transfers) == {"STOR", "RETR"}, records
    sessions = set()
    for cmd, path, size in (("STOR", "/up.bin", 1234), ("RETR", "/hello.txt", 5)):
        r = transfers[cmd]
        assert (r["path"], r["bytes"], r["code"], r["user"], r["client"], r["completed"]) == \
            (path, size, 226, "alice", "127.0.0.1", True), r
        assert isinstance(r["seconds"], float) and isinstance(r["client_port"], int)
        assert len(r["session"]) == 8
        sessions.add(r["session"])
    assert len(sessions) == 1  # one connection, one id
    logins = [r for r in records if r["event"] == "login"]
    failed = [r for r in records if r["event"] == "login_failed"]
    assert len(logins) == 1 and logins[0]["session"] in sessions and logins[0]["user"] == "alice"
    assert len(failed) == 1 and failed[0]["session"] not in sessions
    assert (failed[0]["user"], failed[0]["code"], logins[0]["code"]) == ("alice", 530, 230)
    assert any(r["event"] == "connect" for r in records) and any(r["event"] == "disconnect" for r in records)
    assert any(r["logger"] == "xxftpd" and "listening" in r["message"] for r in records)
    assert any(r["logger"] == "pyftpdlib" and "starting FTP server" in r["message"] for r in records)
    if level == "info":
        refused = [r for r in records if r["event"] == "command"]
        assert [(r["command"], r["path"], r["code"]) for r in refused] == [("DELE", "/missing.txt", 550)]
    else:  # every command and reply, pyftpdlib's own lines
        received = [r["message"] for r in records if r["event"] == "received"]
        assert "<- LIST" in received and "<- PASS ******" in received
        assert any(r["event"] == "reply" and r["code"] == 500 for r in records)


def test_text_stays_the_default(tree):
    tree.user("alice", password="pw")
    text = _upload_once(tree.root)
    assert "-[alice] STOR /a.bin ok bytes=3 seconds=" in text
    assert not any(line.startswith("{") for line in text.splitlines())


def test_a_traceback_is_a_field():
    formatter = JsonFormatter()
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("pyftpdlib", logging.ERROR, __file__, 1, "unhandled %s", ("x",),
                                   sys.exc_info())
    setattr(record, FIELDS, fields(session="abcd1234")[FIELDS])
    line = formatter.format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "unhandled x" and data["session"] == "abcd1234" and data["level"] == "error"
    assert "Traceback" in data["traceback"] and "ValueError: boom" in data["traceback"]
    # a non-UTF-8 name (surrogate-escaped) and a bad %-format still make one line
    odd = logging.LogRecord("x", logging.INFO, __file__, 1, "name %s %d", ("\udcff", "notanumber"), None)
    assert json.loads(JsonFormatter().format(odd))["event"] == "log"


@pytest.mark.parametrize("model", [("--workers", "2"), ("--concurrency", "multi-thread")])
def test_json_in_other_serving_models(tree, model):
    tree.user("alice", password="pw")
    records = _records(_upload_once(tree.root, "--log-format", "json", *model))
    (transfer,) = [r for r in records if r["event"] == "transfer"]
    assert (transfer["path"], transfer["bytes"], transfer["code"], transfer["user"]) == ("/a.bin", 3, 226, "alice")
