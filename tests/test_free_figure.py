"""The room left is shown in exact bytes when rounding would hide the change."""

from __future__ import annotations

from conftest import store
from xxftp_pyftpdlib import quota


def test_free_text_rules():
    ten = 10 * 1024 * 1024
    assert quota.free_text(quota.Usage(ten, 0, 0)) == "10.0 MiB free of 10.0 MiB quota"
    assert quota.free_text(quota.Usage(ten, 100, 0)) == f"{ten - 100} bytes free of 10.0 MiB quota"
    assert quota.free_text(quota.Usage(ten, 200 * 1024, 0)) == "9.8 MiB free of 10.0 MiB quota"
    assert quota.free_text(quota.Usage(10240, 5120, 0)) == "5.0 KiB free of 10.0 KiB quota"
    assert quota.usage_text(quota.Usage(ten, 0, 100)) == (
        f"0 bytes used of 10.0 MiB (0%), 100 bytes held by running uploads, {ten - 100} bytes free")


def test_a_small_upload_shows_in_the_226_and_site_quota(tree, start_server, connect):
    tree.user("alice", size="10M")
    ftp = connect(start_server(tree.root).port, "alice")
    reply = store(ftp, "small.txt", b"x" * 100)
    assert reply.startswith("226") and f"{10 * 1024 * 1024 - 100} bytes free of 10.0 MiB quota" in reply, reply
    assert f"{10 * 1024 * 1024 - 100} bytes free" in ftp.sendcmd("SITE QUOTA")
