"""Who may connect and log in: address lists, per-user hosts, bans.

Rules that live here:

- ``--deny-from`` wins over ``--allow-from``; with an allow list, only the
  addresses in it may connect. Refused connections get ``421`` at once.
- A home's ``.xxftp/hosts`` lists the networks (one CIDR or address a
  line, ``#`` comments) a user may log in from. A malformed line is
  reported and skipped; a file with no valid line lets nobody in (fail
  closed). An IPv4 address seen as ``::ffff:a.b.c.d`` is matched as IPv4.
- After ``ban_after`` failed logins an address is banned for ``ban_time``
  seconds from the moment its last refusal is sent (the failed-login delay
  after the count, which is taken at once): new connections get ``421``
  until then, and the log line and the ``421`` agree on the time. A successful login
  clears its count. An IPv6 client is counted and banned by its /64, as
  the per-address limits count it (``addresses.source_of``): one host
  owns that many addresses. The table lives in memory (at most
  ``BanList.MAX_ENTRIES``: beyond, the counts of addresses not banned are
  forgotten); with worker processes it lives in one shared manager
  process, so every worker sees every failure.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import MutableMapping

from .addresses import source_of

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    found = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def network(text: str) -> Network:
    """``10.0.0.0/8``, ``192.0.2.7`` or ``::1``; ValueError if malformed.
    A network of IPv4-mapped addresses (``::ffff:10.0.0.0/104``) is the
    IPv4 network it maps: clients are never seen in that form."""
    net = ipaddress.ip_network(text.strip(), strict=False)
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        return ipaddress.ip_network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def networks(items: list[str] | None) -> list[Network]:
    """Parse flag values: each may hold several networks separated by commas."""
    out: list[Network] = []
    for item in items or ():
        out.extend(network(part) for part in item.split(",") if part.strip())
    return out


def matches(ip: str, nets: list[Network]) -> bool:
    if not nets:  # every connection asks: no parsing when there is no list
        return False
    try:
        addr = address(ip)
    except ValueError:
        return False
    return any(addr.version == net.version and addr in net for net in nets)


def permitted(ip: str, allow: list[Network], deny: list[Network]) -> bool:
    if matches(ip, deny):
        return False
    return not allow or matches(ip, allow)


def parse_hosts(text: str, path: str):
    """(networks, problems) of a ``.xxftp/hosts`` file."""
    from .config import Parsed, Problem  # config imports nothing from here

    nets: list[Network] = []
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            nets.append(network(line))
        except ValueError:
            problems.append(Problem(path, number, f"invalid network {line!r} (CIDR or address)"))
    return Parsed(tuple(nets), tuple(problems))


class BanList:
    """Failed-login counts and bans per client (``source_of``)."""

    MAX_ENTRIES = 65536

    def __init__(self, ban_after: int, ban_time: float, table: MutableMapping | None = None,
                 lock=None) -> None:
        self.ban_after = ban_after
        self.ban_time = ban_time
        self._table = table if table is not None else {}
        self._lock = lock if lock is not None else threading.Lock()

    @classmethod
    def shared(cls, ban_after: int, ban_time: float) -> "BanList":
        """A ban list visible to every process forked after this call."""
        import multiprocessing

        manager = multiprocessing.Manager()
        ban_list = cls(ban_after, ban_time, manager.dict(), manager.Lock())
        ban_list._manager = manager  # keep the manager process alive
        return ban_list

    def close(self) -> None:
        manager = getattr(self, "_manager", None)
        if manager is not None:
            manager.shutdown()

    def banned_for(self, ip: str) -> float:
        """Seconds left of a ban on ``ip`` (0: not banned)."""
        entry = self._table.get(source_of(ip))
        if not entry:
            return 0.0
        left = entry[1] - time.time()
        return left if left > 0 else 0.0

    def failed(self, ip: str, refused_in: float = 0.0) -> bool:
        """Count a failed login whose refusal goes out in ``refused_in``
        seconds; True if the address is now banned (from now on, for
        ``ban_time`` seconds after that refusal)."""
        key = source_of(ip)
        with self._lock:
            if len(self._table) >= self.MAX_ENTRIES:
                self._forget_unbanned()
            count, until = self._table.get(key, (0, 0.0))
            if until and until <= time.time():
                count, until = 0, 0.0
            count += 1
            if count >= self.ban_after:
                until = time.time() + refused_in + self.ban_time
            self._table[key] = (count, until)
            return count >= self.ban_after

    def _forget_unbanned(self) -> None:
        """Make room (under the lock): drop every count that is not a ban in force."""
        now = time.time()
        for key, (_, until) in list(self._table.items()):
            if until <= now:
                self._table.pop(key, None)

    def banned_now(self) -> int:
        """How many addresses are banned at this moment."""
        now = time.time()
        with self._lock:
            entries = list(self._table.values())
        return sum(1 for _, until in entries if until > now)

    def succeeded(self, ip: str) -> None:
        with self._lock:
            self._table.pop(source_of(ip), None)
