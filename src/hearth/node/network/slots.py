"""Network slots: a network namespace per sandbox, wired to the host by a veth pair.

Slot `i` of the pool owns the `/30` at `pool + 4*i`: `.1` is the host's end
(`{prefix}{i}` in the host's namespace, the slot's gateway), `.2` is the slot's `eth0`
and the address the node and proxy reach envd at. Its namespace is pinned by a bind
mount at `state_dir/{i}`, so it outlives the node process and a restarted node can adopt
it; the file is created with O_EXCL, which also makes claiming an index atomic between
processes. What the slot may reach is the business of `rules.SlotRules`.

Every call here blocks (netlink, nft, mounts) and is safe to make from many threads at
once; the node calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hearth.node.network import _netns
from hearth.node.network.policy import UNRESTRICTED, Egress
from hearth.node.network.rules import DEFAULT_BLOCKED, SlotRules

log = logging.getLogger(__name__)

DEFAULT_POOL = "10.200.0.0/16"
DEFAULT_PREFIX = "hth"
SLOT_PREFIXLEN = 30
SLOT_INTERFACE = "eth0"


class NetworkError(RuntimeError):
    """A slot could not be made, adopted or released."""


@dataclass
class NetworkSlot:
    """One sandbox's network: its namespace (joined by path), veth pair and rules."""

    index: int
    interface: str  # the host's end of the veth pair
    netns_path: Path
    gateway: str  # the host's address on the slot's link
    address: str  # the slot's own address (eth0): where the host reaches the sandbox
    egress: Egress
    _pool: NetworkPool = field(repr=False)
    _released: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_egress(self, egress: Egress) -> None:
        """Replace what the slot may reach, at once (see `SlotRules.set_egress`)."""
        with self._lock:
            if self._released:
                raise NetworkError(f"network slot {self.interface} is released")
            if egress != self.egress:
                self._pool.rules.set_egress(self.interface, self.egress, egress)
                self.egress = egress
                self._pool._egress_changed(self.address, egress)

    def release(self) -> None:
        """Remove the veth pair, the namespace and the slot's rules; free the index.

        Safe to repeat. Every step is tried even if an earlier one fails; the first
        failure is raised at the end.
        """
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            self._pool._egress_changed(self.address, None)
            self._pool.remove(self.index, self)
        finally:
            self._pool._free(self.index)


class NetworkPool:
    """Hands out network slots from an IPv4 range the host does not use otherwise."""

    def __init__(
        self,
        state_dir: Path,
        cidr: str = DEFAULT_POOL,
        *,
        interface_prefix: str = DEFAULT_PREFIX,
        blocked: Sequence[str] = DEFAULT_BLOCKED,
        resolvers: Sequence[str] = (),
        egress_port: int | None = None,
        public_ports: Sequence[int] = (),
        on_egress: Callable[[str, Egress | None], None] | None = None,
        table: str = "hearth",
    ) -> None:
        """`on_egress(address, policy)` hears of every slot's policy as it is set,
        changed, and (None) released: the node's egress proxy follows it."""
        self.state_dir = Path(state_dir)
        self.pool = ipaddress.ip_network(cidr)
        if not isinstance(self.pool, ipaddress.IPv4Network) or self.pool.prefixlen > 28:
            raise ValueError(f"the slot pool must be an IPv4 range of /28 or larger: {cidr}")
        if not re.fullmatch(r"[a-z]{1,6}", interface_prefix):
            raise ValueError("interface_prefix: 1 to 6 lowercase letters")
        self.prefix = interface_prefix
        self.rules = SlotRules(
            interface_prefix,
            self.pool,
            blocked,
            resolvers=resolvers,
            egress_port=egress_port,
            public_ports=public_ports,
            table=table,
        )
        self._on_egress = on_egress
        self._size = self.pool.num_addresses // 4
        self._lock = threading.Lock()
        self._used: set[int] = set()
        self._host_networks: list[ipaddress.IPv4Network] = []
        self._next = 0
        self._ready = False

    # --- setup -----------------------------------------------------------------------

    def setup(self) -> None:
        """Make the host ready for slots: forwarding on, the rules table installed, the
        host's own networks noted so that no slot overlaps them. Idempotent."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        # Slots reach the internet through the host, which must route for them.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        self.rules.install()
        self._host_networks = self._networks_in_use()
        self._ready = True

    def _networks_in_use(self) -> list[ipaddress.IPv4Network]:
        """Every IPv4 network the host has an address in or a route to, but ours."""
        from pyroute2 import IPRoute

        found: set[ipaddress.IPv4Network] = set()
        with IPRoute() as ipr:
            ours = {
                link["index"]
                for link in ipr.get_links()
                if self._index_of(link.get_attr("IFLA_IFNAME") or "") is not None
            }
            for addr in ipr.get_addr(family=2):
                if addr["index"] not in ours:
                    net = f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"
                    found.add(ipaddress.IPv4Network(net, strict=False))
            for route in ipr.route("dump", family=2):
                if route.get_attr("RTA_OIF") in ours or route["dst_len"] == 0:
                    continue
                dst = route.get_attr("RTA_DST")
                if dst:
                    found.add(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
        return sorted(found)

    # --- slots -----------------------------------------------------------------------

    def acquire(self, egress: Egress = UNRESTRICTED) -> NetworkSlot:
        """A new slot, ready: its namespace can be joined and its address answers."""
        if not self._ready:
            raise NetworkError("NetworkPool.setup() has not run")
        attempts = 0
        while True:
            index = self._claim()
            try:
                return self._build(index, egress)
            except _IndexTaken:
                # Another process holds the name or the file: keep the index marked as
                # used (it is not ours to clean) and try the next one.
                attempts += 1
                if attempts > 64:
                    raise NetworkError("could not find a free network slot") from None
            except BaseException:
                self._free(index)
                raise

    def adopt(self, index: int, egress: Egress) -> NetworkSlot:
        """Take back a slot a previous node process made (see `LocalNode.reconcile`)."""
        slot = self._slot(index, egress)
        if not _netns.is_pinned(slot.netns_path):
            raise NetworkError(f"slot {index}: no network namespace at {slot.netns_path}")
        if not _link_exists(slot.interface):
            raise NetworkError(f"slot {index}: no interface {slot.interface}")
        with self._lock:
            if index in self._used:
                raise NetworkError(f"slot {index} is already in use")
            self._used.add(index)
        # The table may have been replaced since (a newer version's rules), or hold what
        # an older policy of the slot's added: put back exactly this one.
        self.rules.remove_slot(slot.interface)
        self.rules.add_slot(slot.interface, slot.address, egress)
        self._egress_changed(slot.address, egress)
        return slot

    def sweep(self, keep: Iterable[int] = ()) -> list[str]:
        """Remove every slot of this pool's but those in `keep`; returns their interface
        names. For a node's start, after adopting what it could.

        A slot is this pool's if its pin file is in the state directory: the file is
        made before anything else of a slot and removed after everything else, so it
        marks every slot a dead process may have left half made or half removed, and
        never one of another node's pools.
        """
        keep = set(keep)
        indexes = set()
        if self.state_dir.is_dir():
            indexes = {int(e) for e in os.listdir(self.state_dir) if e.isdigit()}
        removed = []
        for index in sorted(indexes - keep):
            with self._lock:
                if index in self._used:
                    continue
            try:
                self.remove(index)
                removed.append(f"{self.prefix}{index}")
            except Exception:
                log.exception("could not remove leftover network slot %d", index)
        return removed

    def remove(self, index: int, slot: NetworkSlot | None = None) -> None:
        """Delete everything of slot `index`, whether or not this process made it."""
        interface = f"{self.prefix}{index}"
        known = (slot.address, slot.egress) if slot else (None, None)
        errors: list[BaseException] = []
        # The pin goes last: while it exists, `sweep` knows the slot is ours.
        for step in (
            lambda: self.rules.remove_slot(interface, *known),
            lambda: _delete_link(interface),
            lambda: _netns.unpin(self.state_dir / str(index)),
        ):
            try:
                step()
            except Exception as e:
                log.error("releasing network slot %s: %s", interface, e)
                errors.append(e)
        if errors:
            raise NetworkError(f"releasing network slot {interface} failed: {errors[0]}")

    def leftovers(self) -> dict[str, list]:
        """What of this pool exists on the host now: pinned namespaces, interfaces and
        rule elements (for tests and diagnostics)."""
        pins = sorted(os.listdir(self.state_dir)) if self.state_dir.is_dir() else []
        links = sorted(n for n in _link_names() if self._index_of(n) is not None)
        elements = self.rules.elements()
        return {
            "netns": pins,
            "interfaces": links,
            **{
                name: [e for e in found if self._index_of(_interface_of(e)) is not None]
                for name, found in elements.items()
            },
        }

    def in_use(self) -> set[int]:
        with self._lock:
            return set(self._used)

    # --- internals -------------------------------------------------------------------

    def _index_of(self, interface: str) -> int | None:
        m = re.fullmatch(re.escape(self.prefix) + r"(\d+)", interface)
        return int(m.group(1)) if m else None

    def _slot(self, index: int, egress: Egress) -> NetworkSlot:
        base = self.pool.network_address + 4 * index
        return NetworkSlot(
            index=index,
            interface=f"{self.prefix}{index}",
            netns_path=self.state_dir / str(index),
            gateway=str(base + 1),
            address=str(base + 2),
            egress=egress,
            _pool=self,
        )

    def _claim(self) -> int:
        with self._lock:
            for _ in range(self._size):
                index = self._next
                self._next = (self._next + 1) % self._size
                if index in self._used or self._overlaps_host(index):
                    continue
                self._used.add(index)
                return index
        raise NetworkError(f"no free network slot in {self.pool}")

    def _egress_changed(self, address: str, egress: Egress | None) -> None:
        if self._on_egress is not None:
            self._on_egress(address, egress)

    def _free(self, index: int) -> None:
        with self._lock:
            self._used.discard(index)

    def _overlaps_host(self, index: int) -> bool:
        net = ipaddress.ip_network(f"{self.pool.network_address + 4 * index}/{SLOT_PREFIXLEN}")
        return any(net.overlaps(used) for used in self._host_networks)

    def _build(self, index: int, egress: Egress) -> NetworkSlot:
        slot = self._slot(index, egress)
        try:
            fd = os.open(slot.netns_path, os.O_CREAT | os.O_EXCL | os.O_RDONLY | os.O_CLOEXEC, 0)
        except FileExistsError:
            raise _IndexTaken from None
        os.close(fd)
        try:
            _netns.create_pinned(slot.netns_path, lambda outer: _wire(slot, outer))
            self.rules.add_slot(slot.interface, slot.address, egress)
            self._egress_changed(slot.address, egress)
        except _IndexTaken:
            _netns.unpin(slot.netns_path)
            raise
        except BaseException:
            try:
                self.remove(index, slot)
            except Exception:
                log.exception("cleaning up the half-made network slot %d", index)
            raise
        return slot


class _IndexTaken(Exception):
    pass


def _wire(slot: NetworkSlot, outer_ns: int) -> None:
    """Inside the slot's new namespace: make the veth pair, address both ends, route."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as inside:
        try:
            inside.link(
                "add",
                ifname=SLOT_INTERFACE,
                kind="veth",
                peer={"ifname": slot.interface, "net_ns_fd": outer_ns},
            )
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise _IndexTaken from None
            raise
        # No IPv6 in slots (no route or NAT for it); it would only add link-local chatter.
        Path(f"/proc/sys/net/ipv6/conf/{SLOT_INTERFACE}/disable_ipv6").write_text("1\n")
        (lo,) = inside.link_lookup(ifname="lo")
        (eth,) = inside.link_lookup(ifname=SLOT_INTERFACE)
        inside.link("set", index=lo, state="up")
        inside.addr("add", index=eth, address=slot.address, prefixlen=SLOT_PREFIXLEN)
        inside.link("set", index=eth, state="up")
        inside.route("add", dst="0.0.0.0/0", gateway=slot.gateway)
    _netns.enter(outer_ns)
    with IPRoute() as outside:
        (host,) = outside.link_lookup(ifname=slot.interface)
        Path(f"/proc/sys/net/ipv6/conf/{slot.interface}/disable_ipv6").write_text("1\n")
        outside.addr("add", index=host, address=slot.gateway, prefixlen=SLOT_PREFIXLEN)
        outside.link("set", index=host, state="up")


def _interface_of(element: str | tuple) -> str:
    return element[0] if isinstance(element, tuple) else element


def _link_names() -> list[str]:
    return os.listdir("/sys/class/net")


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT):
                raise
