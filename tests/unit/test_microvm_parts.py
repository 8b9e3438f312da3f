"""The microvm runtime's pure parts: QEMU command lines, the guest's network args, the
saved states' disks and their collection."""

import shutil
import subprocess
from pathlib import Path

import pytest

from hearth.node.runtime.microvm import guestnet, saved
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


needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def _qcow2(path: Path, backing: Path | str | None = None) -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-F", "qcow2", "-b", str(backing)]
    subprocess.run([*argv, str(path), "64M"], check=True)
    return path


def _saved_state(saved_dir: Path, name: str, backing: Path) -> Path:
    directory = saved_dir / name
    directory.mkdir(parents=True)
    _qcow2(directory / saved.DISK, backing)
    return directory


@needs_qemu_img
def test_a_disk_copy_names_its_backing_by_absolute_path(tmp_path):
    base = _qcow2(tmp_path / "base.qcow2")
    (tmp_path / "vm").mkdir()
    overlay = _qcow2(tmp_path / "vm" / "overlay.qcow2", "../base.qcow2")
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / "disk.qcow2"
    saved.copy_disk(overlay, copy)
    assert saved.backing_chain(overlay) == [base.resolve()]
    assert saved.backing_chain(copy) == [base.resolve()]
    assert saved.backing_chain(base) == []


@needs_qemu_img
def test_a_forgotten_saved_state_goes_once_nothing_is_backed_by_it(tmp_path):
    base = _qcow2(tmp_path / "base.qcow2")
    saved_dir = tmp_path / "saved"
    a = _saved_state(saved_dir, "a", base)
    b = _saved_state(saved_dir, "b", a / saved.DISK)  # captured from a sandbox of a
    kept = _saved_state(saved_dir, "kept", base)
    (saved_dir / ".c.partial").mkdir()  # a capture in progress: not a state
    overlay = _qcow2(tmp_path / "overlay.qcow2", b / saved.DISK)
    for directory in (a, b, kept):
        assert saved.read(directory) is None  # no metadata: not complete
    saved.forget(a)
    saved.forget(b)
    assert saved.collect(saved_dir, [overlay]) == []
    assert saved.collect(saved_dir, []) == ["b", "a"]  # b's going frees a
    assert sorted(p.name for p in saved_dir.iterdir()) == [".c.partial", "kept"]
    assert saved.sweep_partial(saved_dir) == [".c.partial"]


def test_saved_state_metadata_round_trips(tmp_path):
    state = saved.SavedState(tmp_path, {"cpu_count": 1}, {"layers": ["x"]}, True, "token")
    (tmp_path / saved.DISK).write_bytes(b"")
    saved.write(tmp_path, state)
    assert saved.read(tmp_path) is None  # memory kept, but no memory state
    (tmp_path / saved.MEMORY_STATE).write_bytes(b"")
    assert saved.read(tmp_path) == state
    assert not saved.valid_name("../x") and saved.valid_name("s0123abc")
