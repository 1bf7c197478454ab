"""Info lines for logins and transfers, and xferlog lines parsed back."""

from __future__ import annotations

import logging

from conftest import download, upload


def test_transfer_log_and_xferlog(tree, start_server, connect, tmp_path, caplog):
    tree.user("alice", password="pw", virtual="docs $root/d read,write\n")
    tree.file("d/my file.txt", b"hello")
    tree.user("anonymous")
    tree.file("anonymous/pub.txt", b"pub")
    log_path = tmp_path / "xferlog"
    caplog.set_level(logging.INFO)
    srv = start_server(tree.root, xferlog_path=str(log_path))
    ftp = connect(srv.port, "alice", "pw")
    upload(ftp, "/docs/up.bin", b"x" * 1234)
    assert download(ftp, "/docs/my file.txt") == b"hello"
    anon = connect(srv.port, "anonymous", "guest@example.org")
    assert download(anon, "pub.txt") == b"pub"
    ftp.quit()
    anon.quit()
    srv.stop()
    lines = [line.split() for line in log_path.read_text().splitlines()]
    assert len(lines) == 3
    fields = ["dow", "mon", "day", "time", "year", "secs", "host", "size", "path", "type", "flag",
              "dir", "mode", "user", "service", "auth", "authuser", "status"]
    parsed = [dict(zip(fields, line)) for line in lines]
    assert all(len(line) == 18 for line in lines)
    up, down, pub = parsed
    assert (up["path"], up["size"], up["dir"], up["mode"], up["user"], up["status"], up["type"]) == \
        ("/docs/up.bin", "1234", "i", "r", "alice", "c", "b")
    assert (down["path"], down["size"], down["dir"]) == ("/docs/my_file.txt", "5", "o")
    assert (pub["mode"], pub["user"], pub["host"]) == ("a", "guest@example.org", "127.0.0.1")
    text = caplog.text
    assert "USER 'alice' logged in" in text
    assert "STOR /docs/up.bin ok bytes=1234" in text and "RETR /docs/my file.txt ok bytes=5" in text
