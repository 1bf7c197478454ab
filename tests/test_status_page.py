"""The live status page, loaded by a real headless Chromium while an upload runs."""

from __future__ import annotations

import ftplib
import json
import os
import socket
import subprocess
import time
from html.parser import HTMLParser

from conftest import HOST, UploadInProgress, free_port, require_programs, start_logged, stop_logged, wait_until

KiB = 1024
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium(url: str, profile, *args: str, budget_ms: int = 5000) -> str:
    """Chromium's stdout after loading ``url`` with ``args`` (``--dump-dom``: the rendered DOM)."""
    require_programs("chromium")
    done = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           f"--virtual-time-budget={budget_ms}", *args, url],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Elements(HTMLParser):
    """Every element of a page as (tag, attributes, its text)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict, list[str]]] = []
        self._open: list[list[str]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        text: list[str] = []
        self.found.append((tag, dict(attrs), text))
        if tag not in ("meta", "link", "br", "img", "input"):
            self._open.append(text)

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        for text in self._open:
            text.append(data)

    def with_class(self, name: str) -> list[tuple[dict, str]]:
        return [(attrs, "".join(text)) for tag, attrs, text in self.found
                if name in (attrs.get("class") or "").split()]


def _pending(ledger) -> int:
    with open(ledger) as f:
        return sum(p["bytes"] for p in json.load(f)["pending"].values())


def test_the_page_shows_the_session_and_the_quota_of_a_running_upload(tree, tmp_path):
    home = tree.user("alice", password="pw", size="1M")
    tree.user("bob", password="pw", size="3M")
    mport = free_port()
    proc, port = start_logged(tree.root, "--metrics", f"{HOST}:{mport}")
    try:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=15)
        ftp.login("alice", "pw")
        running = UploadInProgress(ftp, "STOR movie.bin")
        assert running.send(b"m" * (100 * KiB))
        ledger = home / ".xxftp" / "ledger"
        seen = [-1]

        def steady() -> bool:  # every byte sent is in: the room held stays put
            last, seen[0] = seen[0], _pending(ledger)
            return last == seen[0] > 0
        assert wait_until(lambda: steady() or bool(time.sleep(0.3)))
        reserved = seen[0]
        with open(ledger) as f:
            used = json.load(f)["used"]

        page = Elements(chromium(f"http://{HOST}:{mport}/", tmp_path / "profile", "--dump-dom"))
        trees = {attrs["data-user"]: (attrs, text) for attrs, text in page.with_class("tree")}
        assert set(trees) == {"alice", "bob"}
        alice, text = trees["alice"]
        assert (int(alice["data-limit"]), int(alice["data-used"]), int(alice["data-reserved"])) == \
            (1024 * KiB, used, reserved)
        assert int(alice["data-free"]) == 1024 * KiB - used - reserved
        assert "held" in text and "free of 1.0 MiB" in text
        bars = [attrs for attrs, _ in page.with_class("reserved")]
        assert any(float(a["style"].split(":")[1].strip(" %;")) > 0 for a in bars)
        assert int(trees["bob"][0]["data-limit"]) == 3 * 1024 * KiB
        updates = [attrs for tag, attrs, _ in page.found if attrs.get("id") == "updates"]
        assert int(updates[0]["data-count"]) >= 1  # it fetched /status.json by itself
        sessions = [attrs for attrs, _ in page.with_class("session")]
        client = "%s:%d" % ftp.sock.getsockname()[:2]
        assert [s["data-client"] for s in sessions if s["data-user"] == "alice"] == [client]
        transfers = [attrs for attrs, _ in page.with_class("transfer")]
        assert [(t["data-direction"], t["data-path"], int(t["data-bytes"])) for t in transfers] == \
            [("upload", "/movie.bin", 100 * KiB)]
        assert running.finish().startswith("226")
        ftp.quit()
    finally:
        stop_logged(proc)


def test_the_page_shows_what_clients_send_as_text(tree, tmp_path, monkeypatch):
    """Paths and commands come from clients: the page shows them as text,
    never as markup, in the state it is served with and in what it renders."""
    from xxftp_pyftpdlib import access, metrics, statuspage
    from xxftp_pyftpdlib.quotaview import QuotaView

    hostile = "</script><img src=x onerror=document.title='owned'>"
    session = {"pid": os.getpid(), "id": 1, "user": "alice", "client": f"{HOST}:4242", "since": 0, "idle": 1,
               "command": f"STOR /{hostile}",
               "transfer": {"direction": "upload", "path": f"/{hostile}", "bytes": 50, "size": 200, "rate": 10.0}}
    monkeypatch.setattr(statuspage, "_sessions", lambda root: [session])
    tree.user("alice", password="pw")
    server = statuspage.StatusServer((HOST, 0), access.networks(list(statuspage.DEFAULT_ALLOW)),
                                     metrics.Metrics(), str(tree.root), QuotaView(str(tree.root)))
    server.start()
    try:
        port = server.address[1]
        with socket.create_connection((HOST, port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Content-Security-Policy: default-src 'none'" in head
        assert b"<img" not in body and b"</script><" not in body
        page = Elements(chromium(f"http://{HOST}:{port}/", tmp_path / "profile", "--dump-dom"))
        assert not [tag for tag, _, _ in page.found if tag == "img"]
        assert [t for tag, _, t in page.found if tag == "title"] == [["xxftpd status"]]
        rows = page.with_class("session")
        assert len(rows) == 1 and hostile in rows[0][1]
        transfer = page.with_class("transfer")[0]
        assert transfer[0]["data-path"] == f"/{hostile}" and "(25%)" in transfer[1]
    finally:
        server.stop()
