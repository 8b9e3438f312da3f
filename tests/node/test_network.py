"""Network slots on their own: shape, concurrency, host ranges skipped, orphans swept."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import subprocess
from pathlib import Path

import pytest

from hearth.node.network.policy import OFFLINE

from .conftest import ROOT_ONLY

pytestmark = ROOT_ONLY

# A prefix, table and range of their own, so nothing here touches the node's slots.
PREFIX, TABLE = "htn", "hearthtest"


@pytest.fixture
def pool(tmp_path: Path):
    from hearth.node.network import NetworkPool

    p = NetworkPool(tmp_path / "netns", "10.202.0.0/16", interface_prefix=PREFIX, table=TABLE)
    p.setup()
    yield p
    p.sweep()
    assert _empty(p.leftovers()), p.leftovers()
    p.rules.uninstall()


def _empty(leftovers: dict) -> bool:
    return not any(leftovers.values())


def _inside(slot, *argv: str) -> str:
    return subprocess.run(
        ["nsenter", f"--net={slot.netns_path}", *argv], check=True, capture_output=True, text=True
    ).stdout


def test_a_slot_is_a_namespace_with_a_veth_pair_an_address_and_rules(pool) -> None:
    slot = pool.acquire(OFFLINE)
    try:
        net = ipaddress.ip_network(f"{slot.address}/30", strict=False)
        assert ipaddress.ip_address(slot.gateway) in net and net.subnet_of(pool.pool)
        host = json.loads(
            subprocess.run(
                ["ip", "-j", "addr", "show", slot.interface], capture_output=True, text=True
            ).stdout
        )
        assert [a["local"] for a in host[0]["addr_info"]] == [slot.gateway]
        inside = json.loads(_inside(slot, "ip", "-j", "addr", "show", "eth0"))
        assert [a["local"] for a in inside[0]["addr_info"] if a["family"] == "inet"] == [
            slot.address
        ]
        routes = json.loads(_inside(slot, "ip", "-j", "route"))
        assert {"dst": "default", "gateway": slot.gateway} in [
            {k: r.get(k) for k in ("dst", "gateway")} for r in routes
        ]
        left = pool.leftovers()
        assert left["sources"] == [(slot.interface, slot.address)]
        assert left["deny_out"] == [(slot.interface, "0.0.0.0/0")]
    finally:
        slot.release()
    slot.release()  # idempotent
    assert _empty(pool.leftovers())


def test_twenty_slots_at_once(pool) -> None:
    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        slots = list(ex.map(lambda _: pool.acquire(), range(20)))
    try:
        assert len({s.address for s in slots}) == 20
        assert len({s.index for s in slots}) == 20
        assert len(pool.leftovers()["interfaces"]) == 20
    finally:
        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            list(ex.map(lambda s: s.release(), slots))
    assert _empty(pool.leftovers())


def test_ranges_the_host_uses_are_skipped(tmp_path: Path) -> None:
    from hearth.node.network import NetworkPool

    # A veth pair stands in for any interface (this kernel has no dummy driver).
    subprocess.run(
        ["ip", "link", "add", "htestdummy", "type", "veth", "peer", "name", "htestdummy1"],
        check=True,
    )
    try:
        subprocess.run(["ip", "addr", "add", "10.203.0.1/28", "dev", "htestdummy"], check=True)
        p = NetworkPool(tmp_path / "ns", "10.203.0.0/24", interface_prefix=PREFIX, table=TABLE)
        p.setup()
        slot = p.acquire()
        try:
            # 10.203.0.0/28 holds the first four /30s.
            assert slot.index == 4 and slot.address == "10.203.0.18"
        finally:
            slot.release()
    finally:
        subprocess.run(["ip", "link", "del", "htestdummy"], check=True)


def test_a_new_pool_sweeps_what_a_dead_one_left(pool, tmp_path: Path) -> None:
    from hearth.node.network import NetworkPool

    for _ in range(3):
        pool.acquire(OFFLINE)  # never released: the process "died"
    assert len(pool.leftovers()["interfaces"]) == 3
    successor = NetworkPool(pool.state_dir, "10.202.0.0/16", interface_prefix=PREFIX, table=TABLE)
    successor.setup()
    removed = successor.sweep()
    assert len(removed) == 3
    assert _empty(successor.leftovers())
    pool._used.clear()


def _connects(slot, address: str) -> str:
    """From inside the slot: "ok", "refused" (a reset or ICMP error) or "timeout"."""
    host, port = address.split(":")
    script = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(3)\n"
        f"try: s.connect(({host!r},{port})); print('ok')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError as e: print('timeout' if 'timed out' in str(e) else repr(e))\n"
    )
    return _inside(slot, "python3", "-c", script).strip()


def test_egress_policies_are_kernel_rules_replaced_at_once(pool, internet) -> None:
    from hearth.node.network.policy import Egress

    slot = pool.acquire(Egress.parse(None, ["198.51.100.2"]))
    try:
        assert _connects(slot, internet.server) == "refused"  # denied: reset at once
        slot.set_egress(Egress.parse(["198.51.100.0/24"], ["0.0.0.0/0"]))
        assert _connects(slot, internet.server) == "ok"  # allowed over a deny of all
        left = pool.leftovers()
        assert left["allow_out"] == [(slot.interface, "198.51.100.0/24")]
        assert left["deny_out"] == [(slot.interface, "0.0.0.0/0")]
        # Link-local metadata stays closed whatever the policy allows.
        slot.set_egress(Egress.parse(["169.254.0.0/16"]))
        assert _connects(slot, internet.metadata) == "timeout"
        slot.set_egress(Egress())
        assert _connects(slot, internet.server) == "ok"
        assert left != pool.leftovers() and pool.leftovers()["allow_out"] == []
    finally:
        slot.release()
    assert _empty(pool.leftovers())


def test_an_adopted_slot_gets_exactly_its_recorded_policy(pool) -> None:
    from hearth.node.network import NetworkPool
    from hearth.node.network.policy import Egress

    old = Egress.parse(["8.8.8.8"], ["0.0.0.0/0"])
    slot = pool.acquire(old)  # the process that made it "died" with this policy
    successor = NetworkPool(pool.state_dir, "10.202.0.0/16", interface_prefix=PREFIX, table=TABLE)
    successor.setup()
    pool._used.clear()
    new = Egress.parse(["1.1.1.0/24"], ["0.0.0.0/0"], allow_internet=False)
    adopted = successor.adopt(slot.index, new)
    try:
        left = successor.leftovers()
        assert left["allow_out"] == [(slot.interface, "1.1.1.0/24")]
        assert left["deny_out"] == [(slot.interface, "0.0.0.0/0")]
    finally:
        adopted.release()
    assert _empty(successor.leftovers())
