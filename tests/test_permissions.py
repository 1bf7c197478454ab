"""Per-tree permissions over real sockets: every word, every command."""

from __future__ import annotations

import ftplib
import io

import pytest

from conftest import download, listing, upload

ALL_FACT_LETTERS = set("acdeflmprw")


@pytest.fixture
def anon(tree):
    """xxftp's public demo: a read-only anonymous home with a write-only upload mount."""
    tree.user("anonymous", permission="read", virtual="upload $root/incoming write\n")
    tree.file("anonymous/readme.txt", b"read me")
    tree.file("incoming/existing.txt", b"old")
    return tree


def test_anonymous_read_only_home_with_upload_mount(anon, start_server, connect):
    ftp = connect(start_server(anon.root).port, "anonymous", "guest@")
    assert download(ftp, "readme.txt") == b"read me"
    for action in (lambda: upload(ftp, "new.txt", b"x"), lambda: ftp.delete("readme.txt"),
                   lambda: ftp.mkd("dir"), lambda: ftp.rename("readme.txt", "r2.txt"),
                   lambda: ftp.sendcmd("SITE CHMOD 600 readme.txt"),
                   lambda: ftp.sendcmd("MFMT 20200101000000 readme.txt")):
        with pytest.raises(ftplib.error_perm, match="^550 Permission denied"):
            action()
    # the upload mount takes new files ...
    upload(ftp, "upload/fresh.txt", b"fresh")
    assert (anon.root / "incoming/fresh.txt").read_bytes() == b"fresh"
    # ... but allows no change, and no download
    with pytest.raises(ftplib.error_perm, match="'modify'"):
        upload(ftp, "upload/existing.txt", b"overwrite")
    with pytest.raises(ftplib.error_perm, match="'modify'"):
        upload(ftp, "upload/existing.txt", b"more", cmd="APPE")
    for action in (lambda: ftp.delete("upload/fresh.txt"), lambda: ftp.rename("upload/fresh.txt", "upload/f2"),
                   lambda: ftp.mkd("upload/d"), lambda: ftp.rmd("upload")):
        with pytest.raises(ftplib.error_perm, match="^550"):
            action()
    with pytest.raises(ftplib.error_perm, match="'read'"):
        download(ftp, "upload/existing.txt")
    assert (anon.root / "incoming/existing.txt").read_bytes() == b"old"
    assert (anon.root / "incoming/fresh.txt").read_bytes() == b"fresh"
    # STOU into the upload mount is a new file too
    ftp.cwd("/upload")
    reply = ftp.storbinary("STOU", io.BytesIO(b"unique"))
    assert reply.startswith("226")
    visible = sorted(p.name for p in (anon.root / "incoming").iterdir() if not p.name.startswith("."))
    assert visible[:2] == ["existing.txt", "fresh.txt"] and len(visible) == 3


@pytest.mark.parametrize("words, allowed", [
    ("read", {"RETR"}),
    ("write", {"STOR-new", "STOU", "APPE-new"}),
    ("modify", {"DELE", "MKD", "RMD", "RENAME", "CHMOD", "MFMT"}),
    ("write,modify", {"STOR-new", "STOU", "APPE-new", "STOR-over", "APPE-over", "DELE", "MKD", "RMD", "RENAME", "CHMOD", "MFMT"}),
    ("read,write,modify", {"RETR", "STOR-new", "STOU", "APPE-new", "STOR-over", "APPE-over", "DELE", "MKD", "RMD", "RENAME", "CHMOD", "MFMT"}),
    ("none", set()),
])
def test_every_word_for_every_command(tree, start_server, connect, words, allowed):
    home = tree.user("alice", password="pw", permission=words)
    srv = start_server(tree.root)

    def attempt(name):
        (home / "f.txt").write_bytes(b"f")
        (home / "d").mkdir(exist_ok=True)
        ftp = connect(srv.port, "alice", "pw")
        actions = {
            "RETR": lambda: download(ftp, "f.txt"),
            "STOR-new": lambda: upload(ftp, "new.txt", b"n"),
            "STOU": lambda: ftp.storbinary("STOU", io.BytesIO(b"u")),
            "APPE-new": lambda: upload(ftp, "new2.txt", b"n", cmd="APPE"),
            "STOR-over": lambda: upload(ftp, "f.txt", b"over"),
            "APPE-over": lambda: upload(ftp, "f.txt", b"more", cmd="APPE"),
            "DELE": lambda: ftp.delete("f.txt"),
            "MKD": lambda: ftp.mkd("newdir"),
            "RMD": lambda: ftp.rmd("d"),
            "RENAME": lambda: ftp.rename("f.txt", "g.txt"),
            "CHMOD": lambda: ftp.sendcmd("SITE CHMOD 600 f.txt"),
            "MFMT": lambda: ftp.sendcmd("MFMT 20200101000000 f.txt"),
        }
        try:
            actions[name]()
            return True
        except ftplib.error_perm as err:
            assert str(err).startswith("550"), err
            return False
        finally:
            ftp.close()

    for name in ("RETR", "STOR-new", "STOU", "APPE-new", "STOR-over", "APPE-over",
                 "DELE", "MKD", "RMD", "RENAME", "CHMOD", "MFMT"):
        assert attempt(name) == (name in allowed), name
    # listing and CWD are always allowed
    ftp = connect(srv.port, "alice", "pw")
    assert "d" in ftp.nlst()
    ftp.cwd("d")


def test_rename_inside_out_of_and_into_mounts(tree, start_server, connect):
    tree.user("alice", password="pw", virtual="rw $root/rw-t read,write,modify\nro $root/ro-t read\n")
    tree.file("rw-t/a.txt", b"a")
    tree.file("rw-t/b.txt", b"b")
    tree.file("ro-t/keep.txt", b"k")
    tree.file("alice/mine.txt", b"m")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    ftp.rename("/rw/a.txt", "/rw/a2.txt")  # inside a mount
    assert (tree.root / "rw-t/a2.txt").read_bytes() == b"a"
    ftp.rename("/rw/a2.txt", "/moved.txt")  # out of a mount into the home
    assert (tree.root / "alice/moved.txt").read_bytes() == b"a"
    with pytest.raises(ftplib.error_perm, match="'modify'"):
        ftp.rename("/mine.txt", "/ro/mine.txt")  # into a read-only mount
    with pytest.raises(ftplib.error_perm, match="'modify'"):
        ftp.rename("/ro/keep.txt", "/stolen.txt")  # out of a read-only mount
    assert (tree.root / "alice/mine.txt").exists()
    assert not (tree.root / "ro-t/mine.txt").exists()
    assert (tree.root / "ro-t/keep.txt").exists()


def test_mount_does_not_inherit(tree, start_server, connect):
    tree.user("alice", password="pw", permission="read", virtual="rw $root/rw-t read,write,modify\n")
    tree.xxftp(tree.folder("rw-t"), "virtual", "ro $root/ro-t read\n")
    tree.folder("ro-t")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    upload(ftp, "/rw/ok.txt", b"ok")  # home is read-only, the mount is not
    with pytest.raises(ftplib.error_perm, match="'write'"):
        upload(ftp, "/rw/ro/no.txt", b"no")  # the nested mount is read-only again


def test_listing_shows_the_real_permission(tree, start_server, connect):
    tree.user("alice", password="pw", permission="read", virtual="up $root/up-t write\nrw $root/rw-t read,write,modify\n")
    tree.file("alice/f.txt", b"f").chmod(0o644)
    tree.file("up-t/u.txt", b"u").chmod(0o644)
    tree.file("rw-t/w.txt", b"w").chmod(0o644)
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    modes = {line.split()[-1]: line.split()[0] for line in listing(ftp)}
    assert modes["f.txt"] == "-r--r--r--"
    assert modes["up"].startswith("d") and modes["rw"].startswith("drw")
    assert {line.split()[-1]: line.split()[0] for line in listing(ftp, "LIST", "/up")}["u.txt"] == "----------"
    assert {line.split()[-1]: line.split()[0] for line in listing(ftp, "LIST", "/rw")}["w.txt"] == "-rw-r--r--"

    def facts(path):
        out = {}
        for line in listing(ftp, "MLSD", path):
            fact_text, name = line.split(" ", 1)
            fields = dict(f.split("=", 1) for f in fact_text.rstrip(";").split(";"))
            out[name] = fields["perm"]
        return out

    home = facts("/")
    assert home["f.txt"] == "r"
    assert set(home["up"]) == {"e", "l", "c"}  # write-only mount: enter, list, create; never delete/rename
    assert set(home["rw"]) == {"c", "e", "l", "m", "p"}  # full rights inside, but the mount point itself stays
    assert set(facts("/rw")["w.txt"]) == {"a", "d", "f", "r", "w"}
    assert facts("/up")["u.txt"] == ""
    assert "perm=r;" in ftp.sendcmd("MLST /f.txt")
