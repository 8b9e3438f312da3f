"""The packet filter of network slots: one nftables table that Hearth owns.

The rules are the same for every slot and match slot interfaces by their name prefix, so
a slot is fenced in from the moment its veth exists, before any per-slot state is added.
What differs per slot lives in sets, and adding, changing or removing a slot's policy is
adding or removing set elements, one atomic transaction each:

- `sources` (interface . address): the one source address a slot may send from; a slot
  without an element here can send nothing beyond the host (fail closed), and a slot
  cannot spoof another's address.
- `allow_out`, `deny_out` (interface . address range): the sandbox's egress policy
  (`policy.Egress`); an allowed destination passes even if it is also denied.
- `proxied` (interface): slots with domain rules, whose TCP connections to destinations
  not explicitly allowed are redirected to the node's egress proxy, which checks the
  name they ask for (TLS SNI, HTTP Host); `web_proxied`: slots with header transforms
  only, whose connections to ports 80 and 443 go there.
- `blocked` (address ranges): destinations no slot may reach whatever its policy says:
  private, loopback and link-local ranges (the cloud metadata address among them).
- `resolvers` (interface . address): the DNS servers a slot is given; port 53 there is
  open to it before `blocked` and the policy (a name rule is useless without DNS, and
  DNS answers alone never open anything: the proxy resolves names itself).
- `public_in`, `egress_in` (interface . port), `egress_to` (interface : port): the
  ports of the slot's node, its server's and its egress proxy's. Nodes that share the
  table (two servers on one host) differ only in these elements, never in the chains.

What the table enforces for traffic from a slot interface:
- to the host itself (any of its addresses): replies to connections the host opened
  (the node and the proxy reach envd and user ports that way), connections the kernel
  redirected to the egress proxy, and the server's public ports (a sandbox reaches
  another sandbox through the proxy, as on E2B) where the slot's policy allows the
  address; nothing else;
- to another slot, or from anywhere else into a slot: only replies;
- forwarded elsewhere (the internet): from its own address, then the resolvers, then not
  to `blocked`, then the policy, per packet (so an update cuts open connections at
  once), then masqueraded behind the host's address.

Base chains at priority -10 see packets before the conventional `filter` tables; a
`drop` here is final, while an `accept` still passes through the host's other tables.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable, Sequence

from hearth.node.network.policy import Egress

TABLE = "hearth"
FAMILY = "inet"
# E2B's `DeniedSandboxCIDRs` (IPv4; slots have no IPv6 at all).
DEFAULT_BLOCKED = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
)
# The per-slot sets, and what `elements()` reports.
SLOT_SETS = (
    "sources",
    "allow_out",
    "deny_out",
    "proxied",
    "web_proxied",
    "resolvers",
    "public_in",
    "egress_in",
    "egress_to",
)
_REDIRECT = "redirect to : iifname map @egress_to"


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
        resolvers: Sequence[str] = (),
        egress_port: int | None = None,
        public_ports: Sequence[int] = (),
        table: str = TABLE,
        nft: str = "nft",
    ) -> None:
        self._prefix = interface_prefix
        self._pool = pool
        self._blocked = [str(ipaddress.ip_network(b)) for b in blocked]
        self._resolvers = [str(ipaddress.IPv4Address(r)) for r in resolvers]
        self._egress_port = egress_port
        self._public_ports = sorted(set(public_ports))
        self._table = table
        self._nft = nft

    @property
    def table(self) -> str:
        return self._table

    def install(self) -> None:
        """Create the table or bring its rules up to date, keeping live slots' elements.

        Chains are flushed and refilled in the same transaction, so there is no moment
        without the rules; sets are declared (a no-op if they exist) and never flushed,
        except `blocked`, which is configuration. Everything that differs between nodes
        sharing the table (their ports, their resolvers) is per-slot elements, so one
        node's start never changes another's slots.
        """
        t = f"{FAMILY} {self._table}"
        slots = f'"{self._prefix}*"'
        dest = "iifname . ip daddr"
        port = "iifname . tcp dport"
        script = [
            f"add table {t}",
            f"add set {t} sources {{ type ifname . ipv4_addr; }}",
            f"add set {t} allow_out {{ type ifname . ipv4_addr; flags interval; }}",
            f"add set {t} deny_out {{ type ifname . ipv4_addr; flags interval; }}",
            f"add set {t} proxied {{ type ifname; }}",
            f"add set {t} web_proxied {{ type ifname; }}",
            f"add set {t} resolvers {{ type ifname . ipv4_addr; }}",
            f"add set {t} public_in {{ type ifname . inet_service; }}",
            f"add set {t} egress_in {{ type ifname . inet_service; }}",
            f"add map {t} egress_to {{ type ifname : inet_service; }}",
            f"add set {t} blocked {{ type ipv4_addr; flags interval; }}",
            f"flush set {t} blocked",
            *_elements(t, "blocked", self._blocked),
            f"add chain {t} input {{ {_base('filter', 'input', -10)} }}",
            f"add chain {t} forward {{ {_base('filter', 'forward', -10)} }}",
            f"add chain {t} prerouting {{ {_base('nat', 'prerouting', -100)} }}",
            f"add chain {t} postrouting {{ {_base('nat', 'postrouting', 100)} }}",
            f"flush chain {t} input",
            f"flush chain {t} forward",
            f"flush chain {t} prerouting",
            f"flush chain {t} postrouting",
            # The host answers a slot on connections it opened itself, on connections the
            # kernel redirected to its node's egress proxy, and on its node's public
            # ports (another sandbox's ports through the proxy) as the slot's policy
            # allows; nothing else.
            f"add rule {t} input iifname {slots} ct state established,related accept",
            f"add rule {t} input iifname {slots} ct status dnat {port} @egress_in accept",
            f"add rule {t} input iifname {slots} {port} @public_in {dest} @allow_out accept",
            f"add rule {t} input iifname {slots} {port} @public_in {dest} @deny_out"
            " reject with tcp reset",
            f"add rule {t} input iifname {slots} {port} @public_in accept",
            f"add rule {t} input iifname {slots} counter drop",
            # Into a slot: replies only. This also keeps slots from one another.
            f"add rule {t} forward oifname {slots} ct state established,related accept",
            f"add rule {t} forward oifname {slots} counter drop",
            # Out of a slot: IPv4 from its own address only, never to blocked ranges
            # (but DNS to its resolvers), then the slot's own policy.
            f"add rule {t} forward iifname {slots} meta nfproto != ipv4 counter drop",
            f"add rule {t} forward iifname {slots} iifname . ip saddr != @sources counter drop",
            f"add rule {t} forward iifname {slots} {dest} @resolvers"
            " meta l4proto { tcp, udp } th dport 53 accept",
            f"add rule {t} forward iifname {slots} ip daddr @blocked counter drop",
            f"add rule {t} forward iifname {slots} {dest} @allow_out accept",
            # A refusal is a reset or an ICMP error, so clients fail at once, and a packet
            # of a connection an update forbids ends it.
            f"add rule {t} forward iifname {slots} {dest} @deny_out meta l4proto tcp"
            " counter reject with tcp reset",
            f"add rule {t} forward iifname {slots} {dest} @deny_out counter reject",
            # To the egress proxy: TCP of slots with domain rules (transforms only: HTTP
            # and HTTPS), not to the host itself, not DNS to the resolvers, not to what
            # the policy allows by address (the kernel passes those itself). A slot with
            # no proxy port is not redirected and meets its deny of all above.
            f"add rule {t} prerouting {dest} @resolvers tcp dport 53 return",
            f"add rule {t} prerouting iifname @proxied meta l4proto tcp"
            f" fib daddr type != local {dest} != @allow_out {_REDIRECT}",
            f"add rule {t} prerouting iifname @web_proxied tcp dport {{ 80, 443 }}"
            f" fib daddr type != local {dest} != @allow_out {_REDIRECT}",
            f"add rule {t} postrouting ip saddr {self._pool} oifname != {slots} masquerade",
        ]
        try:
            self._run(script)
        except RulesError:
            # A table left by an older, incompatible version (a set of another type):
            # replace it whole. Adopted slots put their elements back afterwards.
            self._run([f"add table {t}", f"delete table {t}", *script])

    def add_slot(self, interface: str, address: str, egress: Egress) -> None:
        t = f"{FAMILY} {self._table}"
        script = [f'add element {t} sources {{ "{interface}" . {address} }}']
        script += self._node_elements("add", t, interface)
        script += _policy_elements("add", t, interface, egress)
        self._run(script)

    def _node_elements(self, verb: str, t: str, interface: str) -> list[str]:
        """The elements that tie a slot to its node: its resolvers, its public ports, its
        egress proxy."""
        name = f'"{interface}"'
        script = []
        for set_name, items in (
            ("resolvers", self._resolvers),
            ("public_in", self._public_ports),
            ("egress_in", [self._egress_port] if self._egress_port else []),
        ):
            if items:
                joined = ", ".join(f"{name} . {item}" for item in items)
                script.append(f"{verb} element {t} {set_name} {{ {joined} }}")
        if self._egress_port:
            value = f" : {self._egress_port}" if verb == "add" else ""
            script.append(f"{verb} element {t} egress_to {{ {name}{value} }}")
        return script

    def set_egress(self, interface: str, old: Egress, new: Egress) -> None:
        """Replace a slot's policy in one transaction (no moment with neither)."""
        t = f"{FAMILY} {self._table}"
        script = _policy_elements("delete", t, interface, old)
        script += _policy_elements("add", t, interface, new)
        if script:
            self._run(script)

    def remove_slot(
        self, interface: str, address: str | None = None, egress: Egress | None = None
    ) -> None:
        """Remove every element of `interface`; removing what is not there is no error.

        With `address` and `egress` known (the slot's own release) this is one nft run;
        otherwise, or if the table differs from what the slot added, the elements are
        listed first.
        """
        t = f"{FAMILY} {self._table}"
        if address is not None and egress is not None:
            script = [f'delete element {t} sources {{ "{interface}" . {address} }}']
            script += self._node_elements("delete", t, interface)
            script += _policy_elements("delete", t, interface, egress)
            try:
                self._run(script)
                return
            except RulesError:
                pass
        script = []
        for name, elements in self.elements().items():
            for element in elements:
                key = element[0] if isinstance(element, tuple) else element
                if key == interface:
                    script.append(f"delete element {t} {name} {{ {_element_text(element)} }}")
        if script:
            self._run(script)

    def elements(self) -> dict[str, list]:
        """The per-slot elements now in the table: pairs (interface, address or range)
        for the concatenated sets, interface names for the others; empty if the table
        does not exist."""
        found: dict[str, list] = {name: [] for name in SLOT_SETS}
        for name in found:
            done = subprocess.run(
                [self._nft, "-j", "list", _kind(name), FAMILY, self._table, name],
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


def _policy_elements(verb: str, t: str, interface: str, egress: Egress) -> list[str]:
    """The nft commands that add (or delete) a slot's policy elements."""
    script = []
    for name, networks in (("allow_out", egress.ipv4_allow), ("deny_out", egress.ipv4_deny)):
        if networks:
            items = ", ".join(f'"{interface}" . {n}' for n in networks)
            script.append(f"{verb} element {t} {name} {{ {items} }}")
    if egress.proxied:
        script.append(f'{verb} element {t} proxied {{ "{interface}" }}')
    if egress.web_proxied:
        script.append(f'{verb} element {t} web_proxied {{ "{interface}" }}')
    return script


def _elements(t: str, name: str, items: Sequence[str]) -> list[str]:
    return [f"add element {t} {name} {{ {', '.join(items)} }}"] if items else []


def _base(kind: str, hook: str, priority: int) -> str:
    return f"type {kind} hook {hook} priority {priority}; policy accept;"


def _kind(name: str) -> str:
    return "map" if name == "egress_to" else "set"


def _set_elements(listing: str) -> Iterable:
    for item in json.loads(listing).get("nftables", []):
        found = item.get("set") or item.get("map") or {}
        for element in found.get("elem", []):
            if isinstance(element, list):  # a map's [key, value]: the key names it
                element = element[0]
            if isinstance(element, dict) and "elem" in element:  # with flags or counters
                element = element["elem"]["val"]
            if isinstance(element, dict) and "concat" in element:
                yield tuple(_value_text(v) for v in element["concat"])
            else:
                yield _value_text(element)


def _value_text(value) -> str:
    """An element's part as nft's input syntax: a name, an address, a prefix or range."""
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return f"{low}-{high}"
    return str(value)


def _element_text(element) -> str:
    if isinstance(element, tuple):
        return " . ".join(_quoted(part) for part in element)
    return _quoted(element)


def _quoted(part: str) -> str:
    return part if part[:1].isdigit() else f'"{part}"'
