"""The microvm runtime's pure parts: QEMU command lines and the guest's network args."""

from pathlib import Path

import pytest

from hearth.node.runtime.microvm import guestnet
from hearth.node.runtime.microvm.vmm import Machine, Vmm

MACHINE = Machine(Path("/k/vmlinux"), Path("/k/initramfs.cpio"), "console=ttyS0", 2, 512, "tcg")


def _without(argv: list[str], *options: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        else:
            out.append(arg)
    return out


def test_template_clone_and_restore_share_one_device_model():
    vmm = Vmm(Path("/vm/abc"))
    template = vmm.argv(MACHINE, "d.qcow2", memory="template", mem_path=Path("/dev/shm/t"))
    clone = vmm.argv(
        MACHINE, "d.qcow2", memory="clone", mem_path=Path("/dev/shm/t"), incoming="defer"
    )
    restore = vmm.argv(MACHINE, "d.qcow2", memory="private", incoming="defer")
    # Device state saved from one loads into the others: only RAM's backing differs.
    assert _without(template, "-object") == _without(clone, "-object", "-incoming")
    assert _without(clone, "-object") == _without(restore, "-object")
    assert "share=on" in template[template.index("-object") + 1]
    assert "share=off" in clone[clone.index("-object") + 1]
    assert restore[restore.index("-object") + 1].startswith("memory-backend-ram,id=mem")
    assert clone[clone.index("-smp") + 1] == "2" and clone[clone.index("-m") + 1] == "512M"
    assert "-incoming" not in template


def test_kvm_only_when_asked():
    kvm = Vmm(Path("/vm/x")).argv(
        Machine(**{**MACHINE.__dict__, "accel": "kvm"}), "d.qcow2", memory="private"
    )
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    tcg = Vmm(Path("/vm/x")).argv(MACHINE, "d.qcow2", memory="private")
    assert tcg[tcg.index("-accel") + 1].startswith("tcg")


def test_every_guest_has_the_same_address():
    args = guestnet.kernel_args(["192.0.2.53", "198.51.100.53"])
    assert "hearth.ip=169.254.0.21/30" in args and "hearth.gw=169.254.0.22" in args
    assert "hearth.dns=192.0.2.53,198.51.100.53" in args


def test_state_paths_with_shell_characters_are_refused():
    from hearth.node.runtime.microvm.vmm import _quote

    assert _quote(Path("/var/lib/hearth/x/memory.state")) == "/var/lib/hearth/x/memory.state"
    with pytest.raises(ValueError):
        _quote(Path("/tmp/a b; rm -rf x"))
