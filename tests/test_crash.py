"""The real xxftpd process: SIGKILL mid-upload in each upload mode, and
quotas shared by processes (multi-proc, and two servers on one root)."""

from __future__ import annotations

import ftplib
import hashlib
import json
import os
import signal
import threading

import pytest

from conftest import HOST, download, free_port, open_file_bytes, run_xxftpd, store, temporaries, wait_until
from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.ledger.scan import scan

KiB = 1024
ORIGINAL = b"original content " * 1000


def ledger_used(folder):
    with open(os.path.join(folder, ".xxftp", "ledger")) as f:
        return json.load(f)["used"]


def start(root, *extra):
    port = free_port()
    proc = run_xxftpd("--root", str(root), "--host", HOST, "--port", str(port), *extra, wait_for_port=port)
    return proc, port


@pytest.mark.parametrize("mode", ["atomic", "atomic-resume", "standard"])
def test_sigkill_mid_upload(tree, mode):
    home = tree.user("alice", password="pw", size="10M", virtual="free $root/free-target read,write,modify\n")
    tree.folder("free-target")
    for name in ("keep.bin", "appe.bin"):
        (home / name).write_bytes(ORIGINAL)
    proc, port = start(tree.root, "--upload-mode", mode)
    partial = os.urandom(256 * KiB)
    conns = []
    try:
        for cmd in ("STOR keep.bin", "STOR new.bin", "APPE appe.bin", "STOR free/loose.bin"):
            ftp = ftplib.FTP()
            ftp.connect(HOST, port, timeout=10)
            ftp.login("alice", "pw")
            ftp.voidcmd("TYPE I")
            conn = ftp.transfercmd(cmd)
            conn.sendall(partial)
            conns.append((ftp, conn))

        def arrived():  # all four uploads, each in a temporary or in place, as its mode says
            return open_file_bytes(proc.pid, tree.root) >= 4 * len(partial) + len(ORIGINAL) - 4 * 64 * KiB

        assert wait_until(arrived), "the server never wrote the partial uploads"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        for ftp, conn in conns:
            conn.close()
            ftp.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    proc, port = start(tree.root, "--upload-mode", mode)
    try:
        ftp = ftplib.FTP()
        ftp.connect(HOST, port, timeout=10)
        ftp.login("alice", "pw")
        listed = set(ftp.nlst()) | set(ftp.nlst("free"))
        assert not any(n.startswith(".") for n in listed)
        assert temporaries(tree.root) == []
        keep, appe = (home / "keep.bin").read_bytes(), (home / "appe.bin").read_bytes()
        new = (home / "new.bin").read_bytes() if (home / "new.bin").exists() else None
        loose = tree.root / "free-target/loose.bin"
        if mode == "atomic":
            assert keep == ORIGINAL and appe == ORIGINAL and new is None and not loose.exists()
        elif mode == "atomic-resume":
            assert keep == ORIGINAL
            assert appe.startswith(ORIGINAL) and partial.startswith(appe[len(ORIGINAL):]) and len(appe) > len(ORIGINAL)
            assert new and partial.startswith(new)
            assert loose.exists() and partial.startswith(loose.read_bytes())
        else:
            assert keep and partial.startswith(keep)  # written in place: the documented price of standard
            assert new and partial.startswith(new)
            assert appe.startswith(ORIGINAL) and len(appe) > len(ORIGINAL)
        assert ledger_used(home) == scan(str(home), ConfigStore(str(tree.root)))
        if mode != "atomic":  # a resumed upload completes the file
            ftp.voidcmd("TYPE I")
            have = ftp.size("new.bin")
            import io
            ftp.storbinary("APPE new.bin", io.BytesIO(partial[have:]))
            assert download(ftp, "new.bin") == partial
        ftp.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _parallel_uploads(ports, count=8, size=300 * KiB):
    payloads = {i: os.urandom(size) for i in range(count)}
    results = {}

    def client(i):
        ftp = ftplib.FTP()
        try:
            ftp.connect(HOST, ports[i % len(ports)], timeout=30)
            ftp.login("alice", "pw")
            results[i] = store(ftp, f"f{i}.bin", payloads[i])
        finally:
            ftp.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return payloads, results


@pytest.mark.parametrize("setup", ["multi-proc", "two-servers"])
def test_processes_never_pass_the_limit_together(tree, setup):
    home = tree.user("alice", password="pw", size="1M")
    procs = []
    try:
        if setup == "multi-proc":
            procs.append(start(tree.root, "--concurrency", "multi-proc"))
        else:
            procs += [start(tree.root), start(tree.root)]
        payloads, results = _parallel_uploads([port for _, port in procs])
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            proc.communicate(timeout=15)
    assert len(results) == 8
    assert all(r.startswith(("226", "552")) for r in results.values()), results
    ok = [i for i, r in results.items() if r.startswith("226")]
    assert len(ok) == 3  # 3 x 300 KiB fit in 1 MiB, a 4th does not
    for i in ok:
        assert hashlib.sha256((home / f"f{i}.bin").read_bytes()).digest() == hashlib.sha256(payloads[i]).digest()
    used = scan(str(home), ConfigStore(str(tree.root)))
    assert used <= 1024 * KiB
    assert ledger_used(home) == used
    assert temporaries(home) == []
