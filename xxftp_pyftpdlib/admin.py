"""The admin commands of ``xxftpd`` (plain functions returning exit codes)."""

from __future__ import annotations

import sys
from typing import TextIO

from .config import shared_store
from .quota import human, shared_quotas
from .survey import limited_ledgers, trees, users


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def quota(root: str, rescan: str | None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``quota``: a table of every quota tree; ``--rescan [USER]`` rebuilds ledgers."""
    store = shared_store(root)
    quotas = shared_quotas(store)
    if rescan not in (None, "*") and rescan not in users(store.server_root):
        print(f"xxftpd: error: no such user {rescan!r}", file=err)
        return 2
    if rescan is not None:
        for info, ledger in limited_ledgers(store, quotas, None if rescan == "*" else rescan):
            bar = _progress(info.label, err)
            used = ledger.rescan(bar)
            if err.isatty():
                err.write("\r\x1b[K")
            print(f"rescanned {info.label}: {human(used)}", file=out)
    rows = [["TREE", "FOLDER", "LIMIT", "USED", "%"]]
    for info in trees(store):
        ledger = quotas.limited(info.root)
        if ledger is None:
            rows.append([info.label, info.root, "unlimited", "-", "-"])
            continue
        usage = ledger.usage()
        if usage.limit is None:
            rows.append([info.label, info.root, "INVALID", human(usage.used), "-"])
            continue
        percent = f"{100 * usage.used / usage.limit:.0f}" if usage.limit else "-"
        rows.append([info.label, info.root, human(usage.limit), human(usage.used), percent])
    print(_table(rows), file=out)
    return 0


def _progress(label: str, err: TextIO):
    if not err.isatty():
        return None

    def show(files: int) -> None:
        err.write(f"\rscanning {label}: {files:,} entries")
        err.flush()

    return show


def reconcile(root: str) -> int:
    """Settle every ledger at start-up (what crashed processes left behind)."""
    store = shared_store(root)
    quotas = shared_quotas(store)
    count = 0
    for info in trees(store):
        ledger = quotas.ledger(info.root)
        if ledger.limited or ledger.exists():
            ledger.usage()
            count += 1
    return count
