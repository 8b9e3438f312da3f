"""The packet filter of network slots: one nftables table that Hearth owns.

The rules are the same for every slot and match slot interfaces by their name prefix, so
a slot is fenced in from the moment its veth exists, before any per-slot state is added.
What differs per slot lives in sets, and adding or removing a slot is adding or removing
set elements, one atomic transaction each:

- `sources` (interface . address): the one source address a slot may send from; a slot
  without an element here can send nothing beyond the host (fail closed), and a slot
  cannot spoof another's address.
- `offline` (interface): slots created with `allow_internet=False`.
- `blocked` (address ranges): destinations no slot may reach, link-local and the cloud
  metadata address among them.

What the table enforces for traffic from a slot interface:
- to the host itself (any of its addresses, IPv4 or IPv6): only replies to connections
  the host opened (the node and the proxy reach envd and user ports that way);
- to another slot, or from anywhere else into a slot: only replies;
- forwarded elsewhere (the internet): from its own address, not to `blocked`, not if it
  is offline, then masqueraded behind the host's address.

Base chains at priority -10 see packets before the conventional `filter` tables; a
`drop` here is final, while an `accept` still passes through the host's other tables.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable, Sequence

TABLE = "hearth"
FAMILY = "inet"
DEFAULT_BLOCKED = ("169.254.0.0/16",)


class RulesError(RuntimeError):
    """nft refused a change; the message carries its output."""


class SlotRules:
    """The `inet hearth` table: created idempotently, per-slot elements added and removed."""

    def __init__(
        self,
        interface_prefix: str,
        pool: ipaddress.IPv4Network,
        blocked: Sequence[str] = DEFAULT_BLOCKED,
        *,
        table: str = TABLE,
        nft: str = "nft",
    ) -> None:
        self._prefix = interface_prefix
        self._pool = pool
        self._blocked = [str(ipaddress.ip_network(b)) for b in blocked]
        self._table = table
        self._nft = nft

    @property
    def table(self) -> str:
        return self._table

    def install(self) -> None:
        """Create the table or bring its rules up to date, keeping live slots' elements.

        Chains are flushed and refilled in the same transaction, so there is no moment
        without the rules; sets are declared (a no-op if they exist) and never flushed,
        except `blocked`, which is configuration.
        """
        t = f"{FAMILY} {self._table}"
        slots = f'"{self._prefix}*"'
        blocked = ", ".join(self._blocked)
        script = [
            f"add table {t}",
            f"add set {t} sources {{ type ifname . ipv4_addr; }}",
            f"add set {t} offline {{ type ifname; }}",
            f"add set {t} blocked {{ type ipv4_addr; flags interval; }}",
            f"flush set {t} blocked",
            *([f"add element {t} blocked {{ {blocked} }}"] if blocked else []),
            f"add chain {t} input {{ {_base('filter', 'input', -10)} }}",
            f"add chain {t} forward {{ {_base('filter', 'forward', -10)} }}",
            f"add chain {t} postrouting {{ {_base('nat', 'postrouting', 100)} }}",
            f"flush chain {t} input",
            f"flush chain {t} forward",
            f"flush chain {t} postrouting",
            # The host answers a slot only on connections it opened itself.
            f"add rule {t} input iifname {slots} ct state established,related accept",
            f"add rule {t} input iifname {slots} counter drop",
            # Into a slot: replies only. This also keeps slots from one another.
            f"add rule {t} forward oifname {slots} ct state established,related accept",
            f"add rule {t} forward oifname {slots} counter drop",
            # Out of a slot: IPv4 from its own address only, never to blocked ranges.
            f"add rule {t} forward iifname {slots} meta nfproto != ipv4 counter drop",
            f"add rule {t} forward iifname {slots} iifname . ip saddr != @sources counter drop",
            f"add rule {t} forward iifname {slots} ip daddr @blocked counter drop",
            f"add rule {t} forward iifname @offline counter drop",
            f"add rule {t} postrouting ip saddr {self._pool} oifname != {slots} masquerade",
        ]
        try:
            self._run(script)
        except RulesError:
            # A table left by an older, incompatible version (a set of another type):
            # replace it whole. Adopted slots put their elements back afterwards.
            self._run([f"add table {t}", f"delete table {t}", *script])

    def add_slot(self, interface: str, address: str, *, allow_internet: bool) -> None:
        t = f"{FAMILY} {self._table}"
        script = [f'add element {t} sources {{ "{interface}" . {address} }}']
        if not allow_internet:
            script.append(f'add element {t} offline {{ "{interface}" }}')
        self._run(script)

    def remove_slot(
        self, interface: str, address: str | None = None, offline: bool | None = None
    ) -> None:
        """Remove every element of `interface`; removing what is not there is no error.

        With `address` and `offline` known (the slot's own release) this is one nft run;
        otherwise, or if the table differs from what the slot added, the elements are
        listed first.
        """
        t = f"{FAMILY} {self._table}"
        if address is not None and offline is not None:
            script = [f'delete element {t} sources {{ "{interface}" . {address} }}']
            if offline:
                script.append(f'delete element {t} offline {{ "{interface}" }}')
            try:
                self._run(script)
                return
            except RulesError:
                pass
        elements = self.elements()
        script = [
            f'delete element {t} sources {{ "{interface}" . {addr} }}'
            for name, addr in elements["sources"]
            if name == interface
        ]
        if interface in elements["offline"]:
            script.append(f'delete element {t} offline {{ "{interface}" }}')
        if script:
            self._run(script)

    def elements(self) -> dict[str, list]:
        """The per-slot elements now in the table: `sources` as (interface, address)
        pairs and `offline` as interface names; empty if the table does not exist."""
        found: dict[str, list] = {"sources": [], "offline": []}
        for name in found:
            done = subprocess.run(
                [self._nft, "-j", "list", "set", FAMILY, self._table, name],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                continue
            found[name] = list(_set_elements(done.stdout))
        return found

    def uninstall(self) -> None:
        """Delete the whole table (nothing of Hearth's stays in the host's filter)."""
        t = f"{FAMILY} {self._table}"
        self._run([f"add table {t}", f"delete table {t}"])

    def _run(self, script: Iterable[str]) -> None:
        text = "\n".join(script) + "\n"
        done = subprocess.run([self._nft, "-f", "-"], input=text, capture_output=True, text=True)
        if done.returncode != 0:
            raise RulesError(f"nft failed ({done.returncode}): {done.stderr.strip()}\n{text}")


def _base(kind: str, hook: str, priority: int) -> str:
    return f"type {kind} hook {hook} priority {priority}; policy accept;"


def _set_elements(listing: str) -> Iterable:
    for item in json.loads(listing).get("nftables", []):
        for element in item.get("set", {}).get("elem", []):
            if isinstance(element, dict) and "concat" in element:
                yield tuple(element["concat"])
            else:
                yield element
