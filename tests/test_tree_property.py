"""Property-based tests of the resolver on its own (no server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.tree import Namespace, PathRefused, split_ftp_path


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A home with nested mounts, loop mounts, and symlinks of every kind."""
    base = tmp_path_factory.mktemp("world")
    root = base / "root"
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    home = root / "alice"
    for d in ("sub/deeper", "ünïcode", "pub"):
        (home / d).mkdir(parents=True)
    (home / "file.txt").write_text("f")
    for t in ("t1/inner", "t2", "t3"):
        (root / t).mkdir(parents=True)
    (home / ".xxftp").mkdir()
    (home / ".xxftp/virtual").write_text(
        "m1 $root/t1 read\nloop $root/alice read\nall $root read\npub $root/t3 read\n")
    (root / "t1/.xxftp").mkdir()
    (root / "t1/.xxftp/virtual").write_text("m2 $root/t2 read,write\nback $root/t1 read\nhome $root/alice read\n")
    (root / "t2/.xxftp").mkdir()
    (root / "t2/.xxftp/virtual").write_text("m3 $root/t3 modify\n")
    os.symlink(outside, home / "out")
    os.symlink(outside / "secret", home / "sub/secret-link")
    os.symlink(home, home / "sub/up")
    os.symlink(home / "file.txt", home / "sub/ok-link")
    os.symlink(root / "t2", root / "t1/inner/to-t2")
    os.symlink("../..", home / "sub/deeper/dotdot")
    allowed = [os.path.realpath(p) for p in (home, root / "t1", root / "t2", root / "t3")]
    return Namespace(ConfigStore(str(root)), str(home)), allowed


COMPONENTS = st.sampled_from([
    "", ".", "..", "...", ".xxftp", "password", ".hidden", "sub", "deeper", "ünïcode", "pub",
    "file.txt", "m1", "m2", "m3", "loop", "all", "back", "home", "inner", "to-t2", "out",
    "secret", "secret-link", "up", "ok-link", "dotdot", "alice", "t1", "root", "%2e%2e", "a\x00b",
])
PATHS = st.lists(COMPONENTS, max_size=14).map(lambda parts: "/".join(parts)) | st.text(max_size=40)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=PATHS, absolute=st.booleans())
def test_resolution_stays_inside_the_allowed_set(world, path, absolute):
    namespace, allowed = world
    try:
        node = namespace.resolve(("/" if absolute else "") + path)
    except PathRefused:
        return
    real = os.path.realpath(node.real)
    assert any(_inside(real, root) for root in allowed), (path, node.real)
    assert _inside(real, node.area.root), (path, node.real, node.area.root)
    assert not any(part.startswith(".") for part in node.ftp.split("/") if part)
    assert node.ftp == "/" + "/".join(split_ftp_path(path))
    assert len(node.trail) == len(set(node.trail))  # never revisits a folder


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(COMPONENTS, max_size=10).map("/".join))
def test_listings_show_only_reachable_names(world, path):
    namespace, allowed = world
    try:
        node = namespace.resolve(path)
        names = namespace.listing(node).names
    except (PathRefused, OSError):
        return
    for name in names:
        assert not name.startswith(".")
        child = namespace.resolve(node.ftp + "/" + name)  # every listed name resolves
        assert any(_inside(os.path.realpath(child.real), root) for root in allowed)


def test_known_refusals(world):
    namespace, _ = world
    for path in ("/loop", "/all", "/out", "/sub/secret-link", "/sub/up", "/m1/back", "/m1/home",
                 "/.xxftp", "/sub/.xxftp/virtual", "/sub/deeper/dotdot"):
        with pytest.raises(PathRefused):
            namespace.resolve(path)
    assert namespace.resolve("/m1/m2/m3").area.permission.words == {"modify"}
    assert namespace.resolve("/sub/ok-link").real.endswith("alice/file.txt")
    # a link inside a mount target to another target is outside that area
    with pytest.raises(PathRefused):
        namespace.resolve("/m1/inner/to-t2")
    assert Path(namespace.resolve("/pub").real).name == "t3"  # the mount hides the real folder
