#!/usr/bin/env python3
"""Regenerate docs/status-page.png: the status page of a demo server, taken
by headless Chromium while an upload and a download run.

    python3 docs/status-page.py [--out docs/status-page.png]

Builds a small tree in a temporary folder (removed at the end), starts
``xxftpd --metrics`` on free loopback ports, holds an upload and a download
open half-way, and screenshots ``/``. Needs the Debian package
``chromium`` and ``pip install 'xxftpd[metrics]'``.
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def xxftp(folder: Path, name: str, text: str) -> None:
    (folder / ".xxftp").mkdir(parents=True, exist_ok=True)
    (folder / ".xxftp" / name).write_text(text)


def user(root: Path, name: str, size: str | None = None, virtual: str | None = None) -> Path:
    home = root / name
    home.mkdir(parents=True)
    xxftp(home, "password", hashlib.md5(b"pw").hexdigest() + "\n")
    if size:
        xxftp(home, "size", size + "\n")
    if virtual:
        xxftp(home, "virtual", virtual)
    return home


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def login(port: int, name: str) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=15)
    ftp.login(name, "pw")
    ftp.voidcmd("TYPE I")
    return ftp


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE / "status-page.png"))
    p.add_argument("--size", default="1100,720", help="window size W,H (default 1100,720)")
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is needed: apt-get install chromium")
    base = Path(tempfile.mkdtemp(prefix="xxftpd-shot-"))
    proc = None
    clients: list[ftplib.FTP] = []
    try:
        root = base / "root"
        user(root, "alice", size="10M")
        user(root, "bob", size="50M", virtual="projects $root/projects read,write,modify\n")
        user(root, "carol")
        (root / "projects").mkdir()
        xxftp(root / "projects", "size", "200M\n")
        (root / "alice" / "photos.tar").write_bytes(b"p" * (3 * MiB + 200 * 1024))
        (root / "projects" / "release.iso").write_bytes(b"r" * (64 * MiB))
        port, mport = free_port(), free_port()
        env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(root), "--host", HOST,
                                 "--port", str(port), "--metrics", f"{HOST}:{mport}", "--log-file",
                                 str(base / "xxftpd.log")], env=env)
        wait_for(port)
        wait_for(mport)

        alice = login(port, "alice")  # an upload held half-way
        clients.append(alice)
        up = alice.transfercmd("STOR holiday.mp4")
        up.sendall(b"v" * (2 * MiB + 300 * 1024))
        bob = login(port, "bob")  # bob commits 12 MiB, then a download stalls on its reader
        clients.append(bob)
        bob.storbinary("STOR /projects/build-1.zip", io.BytesIO(b"z" * (12 * MiB)))
        down = bob.transfercmd("RETR /projects/release.iso")
        down.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        down.recv(1024)
        carol = login(port, "carol")
        clients.append(carol)
        carol.pwd()
        time.sleep(2.5)  # past the quota view's cache: the figures of now

        out = Path(args.out).resolve()
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={base / 'profile'}", "--hide-scrollbars", "--virtual-time-budget=3000",
                        f"--window-size={args.size}", f"--screenshot={out}", f"http://{HOST}:{mport}/"],
                       check=True, capture_output=True, timeout=90)
        print(f"wrote {out}")
        up.close()
        down.close()
    finally:
        for ftp in clients:
            ftp.close()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
