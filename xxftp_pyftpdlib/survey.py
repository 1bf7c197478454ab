"""Finding the quota trees of a server root, for admin views and start-up.

Rules that live here:

- The trees of a root are each user's home plus the targets of the mounts
  declared in the top folder of a home or of another listed target
  (mounts declared deeper are found when first used).
- A tree is listed once, however many mounts point at it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .accounts import USER_NAME
from .config import ConfigStore
from .ledger import Ledger, Quotas


@dataclass(frozen=True)
class TreeInfo:
    root: str  # real folder
    label: str  # "alice" or "alice:/docs -> /srv/docs"
    user: str


def users(root: str) -> list[str]:
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [n for n in names if USER_NAME.fullmatch(n) and os.path.isdir(os.path.join(root, n))]


def trees(store: ConfigStore, only_user: str | None = None) -> list[TreeInfo]:
    found: dict[str, TreeInfo] = {}
    for user in users(store.server_root):
        if only_user is not None and user != only_user:
            continue
        home = os.path.realpath(os.path.join(store.server_root, user))
        queue = [(home, user, "")]
        while queue:
            folder, label, ftp = queue.pop(0)
            if folder in found:
                continue
            found[folder] = TreeInfo(folder, label, user)
            for mount in store.mounts(folder).values():
                target = os.path.realpath(mount.target)
                if os.path.isdir(target) and target not in found:
                    path = f"{ftp}/{mount.name}"
                    queue.append((target, f"{user}:{path}", path))
    return list(found.values())


def limited_ledgers(store: ConfigStore, quotas: Quotas, only_user: str | None = None) -> list[tuple[TreeInfo, Ledger]]:
    """The trees whose usage is tracked, with their ledgers."""
    return [(info, quotas.limited(info.root)) for info in trees(store, only_user)
            if quotas.limited(info.root) is not None]
