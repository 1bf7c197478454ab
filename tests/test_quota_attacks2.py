"""Second round of attacks on quotas and one writer per file: routes that
reach one folder through two trees, and trees inside trees."""

from __future__ import annotations

import ftplib
import os
import time

from conftest import UploadInProgress, ledger_used, store, tree_usage, upload_or_refusal

KiB = 1024
ARRIVAL = 0.3  # time for sent bytes to reach the server


def _reply(command, *args) -> str:
    try:
        return command(*args)
    except ftplib.Error as err:
        return str(err)


def _nested_mounts(tree):
    """No limits: alice mounts team-space as /team, bob only its sub-folder as /sub."""
    tree.folder("team-space/sub")
    tree.user("alice", password="pw", virtual="team $root/team-space read,write,modify\n")
    tree.user("bob", password="pw", virtual="sub $root/team-space/sub read,write,modify\n")
    return tree.root / "team-space/sub"


# --- one folder reached through two mounts of an unlimited area


def test_second_upload_to_a_new_name_through_another_mount_is_refused(tree, start_server, connect):
    _nested_mounts(tree)
    port = start_server(tree.root).port
    alice, bob = connect(port, "alice", "pw"), connect(port, "bob", "pw")

    upload = UploadInProgress(alice, "STOR team/sub/new.bin")
    upload.send(b"A" * KiB)
    time.sleep(ARRIVAL)
    second = upload_or_refusal(bob, "STOR sub/new.bin", b"B" * KiB)
    first = upload.finish()

    assert first.startswith("226"), first
    assert second.startswith("450"), f"a second writer of the same new name got in: {second}"


def test_dele_through_another_mount_of_a_file_being_appended_is_refused(tree, start_server, connect):
    sub = _nested_mounts(tree)
    (sub / "f.bin").write_bytes(b"o" * 1000)
    port = start_server(tree.root).port
    alice, bob = connect(port, "alice", "pw"), connect(port, "bob", "pw")

    upload = UploadInProgress(alice, "APPE team/sub/f.bin")
    upload.send(b"A" * KiB)
    time.sleep(ARRIVAL)
    dele = _reply(bob.delete, "sub/f.bin")
    reply = upload.finish(b"A" * KiB)

    assert reply.startswith("226"), reply
    assert dele.startswith("450"), f"{dele}; the appended bytes answered 226 are gone"


# --- a folder that holds a tree of its own moves while an upload runs in that tree


def test_moving_the_parent_of_a_tree_with_a_running_upload_keeps_its_ledger(tree, start_server, connect):
    home = tree.user("alice", password="pw", size="1M")
    tree.xxftp(tree.folder("alice/a/b"), "size", "128K\n")
    port = start_server(tree.root).port
    writer, other = connect(port, "alice", "pw"), connect(port, "alice", "pw")

    upload = UploadInProgress(writer, "STOR a/b/f.bin")
    upload.send(b"x" * (48 * KiB))
    time.sleep(ARRIVAL)
    other.sendcmd("RNFR a")
    moved = _reply(other.sendcmd, "RNTO c")  # a rename within alice's tree: allowed while uploads run
    reply = upload.finish(b"x" * (48 * KiB))
    assert moved.startswith("250") and reply.startswith("226"), (moved, reply)
    sub = home / "c/b"
    second = store(other, "c/b/g.bin", b"y" * (96 * KiB))

    assert tree_usage(sub, tree.root) <= 128 * KiB, f"{tree_usage(sub, tree.root)} bytes in a 128 KiB tree: {second}"
    assert ledger_used(sub) == tree_usage(sub, tree.root), second
    assert not (home / "a").exists(), "the moved folder came back (a ledger recreated under its old path)"


# --- a size file added to a sub-folder while an upload into it runs


def test_size_file_added_to_a_subfolder_mid_upload_keeps_its_limit(tree, start_server, connect):
    tree.user("alice", password="pw", size="1M")
    sub = tree.folder("alice/sub")
    port = start_server(tree.root).port
    writer, other = connect(port, "alice", "pw"), connect(port, "alice", "pw")

    upload = UploadInProgress(writer, "STOR sub/first.bin")
    upload.send(b"A" * (96 * KiB))
    time.sleep(ARRIVAL)
    tree.xxftp(sub, "size", "128K\n")  # sub becomes a tree of its own
    other.sendcmd("SITE QUOTA sub")  # its ledger is made (and scanned) now
    reply = upload.finish()
    assert reply.startswith("226"), reply
    second = store(other, "sub/second.bin", b"B" * (96 * KiB))

    assert ledger_used(sub) == tree_usage(sub, tree.root), second
    assert tree_usage(sub, tree.root) <= 128 * KiB, f"{tree_usage(sub, tree.root)} bytes in a 128 KiB tree: {second}"


# --- a file hard-linked into two limited trees grows through one of them


def test_a_file_hard_linked_into_another_tree_is_never_written_in_place(tree, start_server, connect):
    """Appending to one name of a hard-linked file would grow its other
    names too (here in bob's tree) uncounted: refused; replacing this name
    (an atomic STOR) changes this name only."""
    tree.user("alice", password="pw", size="1M")
    bob = tree.user("bob", password="pw", size="128K")
    shared = tree.file("alice/shared.bin", b"s" * (64 * KiB))
    os.link(shared, bob / "shared.bin")
    port = start_server(tree.root).port
    alice, bobftp = connect(port, "alice", "pw"), connect(port, "bob", "pw")
    assert store(bobftp, "warm.bin", b"").startswith("226")  # bob's ledger is scanned: 64 KiB

    refusal = store(alice, "shared.bin", b"a" * (48 * KiB), cmd="APPE")
    assert refusal.startswith("550") and "hard links" in refusal, refusal
    assert store(alice, "shared.bin", b"r" * (48 * KiB)).startswith("226")  # replaces alice's name only
    assert (bob / "shared.bin").read_bytes() == b"s" * (64 * KiB)
    second = store(bobftp, "more.bin", b"b" * (48 * KiB))
    assert second.startswith("226"), second

    assert ledger_used(bob) == tree_usage(bob, tree.root), second
    assert tree_usage(bob, tree.root) <= 128 * KiB, f"{tree_usage(bob, tree.root)} bytes in a 128 KiB tree: {second}"
