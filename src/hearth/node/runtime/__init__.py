"""Sandbox runtimes, and the choice between them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from hearth.node.local import RuntimeKind

RUNTIMES = ("auto", "microvm", "container", "isolated")


def hardware_virtualization(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU offers vmx or svm. The mere presence of /dev/kvm says nothing:
    a paravirtualized KVM (PVM) exposes it too, and stock guest kernels die under it."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"vmx", "svm"})
    return False


def choose_runtime(requested: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> RuntimeKind:
    """Resolve `auto`: microVMs where they run at hardware speed, containers elsewhere
    (software-emulated VMs are correct but 14-80x slower; pick `microvm` to force them)."""
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}: choose one of {', '.join(RUNTIMES)}")
    if requested != "auto":
        return cast("RuntimeKind", requested)  # one of RUNTIMES (checked above), not auto
    return "microvm" if hardware_virtualization(cpuinfo) else "container"
