"""A VM's network inside its sandbox's slot: a tap device and the address translation.

Every VM, clone or not, has the same guest address (as in E2B: guest 169.254.0.21, tap
169.254.0.22), so clones of one snapshot need no reconfiguration. Inside the slot's
namespace, traffic for the slot's address is translated to the guest (DNAT) and the
guest's traffic leaves as the slot's address (SNAT): the node and the proxy reach envd
at `slot.address:49983` exactly as for containers, and the host's egress rules, which
see only the slot's address, stay as they are. The tap has a fixed MAC too: a restored
guest's neighbour cache still names the template's.

Everything here lives in the slot's namespace and goes with it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

GUEST_ADDRESS = "169.254.0.21"
TAP_ADDRESS = "169.254.0.22"
PREFIX_LEN = 30
TAP = "tap0"
TAP_MAC = "02:68:74:00:00:16"
SLOT_INTERFACE = "eth0"


class GuestNetError(RuntimeError):
    pass


def kernel_args(dns: list[str]) -> str:
    """The guest's side, for the kernel command line (read by the guest init)."""
    args = f"hearth.ip={GUEST_ADDRESS}/{PREFIX_LEN} hearth.gw={TAP_ADDRESS}"
    return f"{args} hearth.dns={','.join(dns)}" if dns else args


def attach(netns: Path, slot_address: str) -> None:
    """Make the tap and the translation in the slot's namespace (blocking)."""
    links = "\n".join(
        [
            f"tuntap add dev {TAP} mode tap",
            f"link set dev {TAP} address {TAP_MAC}",
            f"addr add {TAP_ADDRESS}/{PREFIX_LEN} dev {TAP}",
            f"link set dev {TAP} up",
        ]
    )
    _in(netns, ["ip", "-batch", "-"], links)
    _in(netns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    rules = "\n".join(
        [
            "table ip hearth_vm {",
            "  chain prerouting {",
            "    type nat hook prerouting priority -100; policy accept;",
            f'    iifname "{SLOT_INTERFACE}" ip daddr {slot_address} dnat to {GUEST_ADDRESS}',
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority 100; policy accept;",
            f'    oifname "{SLOT_INTERFACE}" ip saddr {GUEST_ADDRESS} snat to {slot_address}',
            "  }",
            "}",
        ]
    )
    _in(netns, ["nft", "-f", "-"], rules)


def _in(netns: Path, argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(
        ["nsenter", f"--net={netns}", "--", *argv], input=stdin, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise GuestNetError(f"{' '.join(argv)} in {netns} failed: {done.stderr.strip()}")
