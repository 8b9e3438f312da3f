import pytest

from hearth.config import settings
from hearth.node.runtime import choose_runtime, hardware_virtualization


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 {flags}\n")
    return path


def test_auto_picks_microvm_only_with_vmx_or_svm(tmp_path):
    assert choose_runtime("auto", cpuinfo(tmp_path, "svm lm")) == "microvm"
    assert choose_runtime("auto", cpuinfo(tmp_path, "vmx")) == "microvm"
    assert choose_runtime("auto", cpuinfo(tmp_path, "hypervisor lm")) == "container"
    assert not hardware_virtualization(tmp_path / "missing")


def test_explicit_choice_is_kept_and_unknown_is_refused(tmp_path):
    assert choose_runtime("microvm", cpuinfo(tmp_path, "")) == "microvm"
    assert choose_runtime("container", cpuinfo(tmp_path, "svm")) == "container"
    with pytest.raises(ValueError, match="choose one of"):
        choose_runtime("firecracker")


def test_runtime_setting_reads_hearth_runtime():
    assert settings({}).runtime == "auto"
    assert settings({"HEARTH_RUNTIME": " Container "}).runtime == "container"
