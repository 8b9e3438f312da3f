"""The DNS servers sandboxes are given: the host's own, unless configured."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

# When the host has none a sandbox can use (only a loopback stub such as systemd-resolved).
FALLBACK = ("8.8.8.8", "1.1.1.1")


def sandbox_resolvers(configured: Sequence[str] | None = None) -> list[str]:
    """`configured` if given, else the host's IPv4 name servers that a sandbox can reach
    (not a loopback stub), else public ones."""
    if configured:
        return list(configured)
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if (
                len(parts) >= 2
                and parts[0] == "nameserver"
                and ":" not in parts[1]
                and not parts[1].startswith("127.")
            ):
                found.append(parts[1])
    return found or list(FALLBACK)
