"""The seccomp filter of container sandboxes: allow by default, deny what breaks out.

Neither crun nor runc ships a default profile (Docker's and Podman's live in their own
projects), so Hearth carries one. It allows everything a workload normally does,
including ptrace (safe since Linux 4.8), and refuses with EPERM what administers the
kernel or the host, mounts, namespaces, BPF, perf, keyrings, io_uring and
userfaultfd. The capability set already denies most of these; the filter also holds
where a capability check has a hole. `clone3` answers ENOSYS, so that glibc falls back
to `clone`, whose namespace flags the filter can see (clone3 passes them in memory).
"""

from __future__ import annotations

EPERM = 1
ENOSYS = 38

DENIED = (
    # the kernel, its modules, its clock and the machine
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "syslog", "iopl", "ioperm", "quotactl", "quotactl_fd",
    "nfsservctl", "lookup_dcookie", "uselib", "vhangup", "sysfs", "_sysctl", "ustat",
    "create_module", "get_kernel_syms", "query_module",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "setns", "unshare", "fsopen", "fsconfig",
    "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # kernel interfaces with a record of privilege escalations
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
)  # fmt: skip

# clone(2) flags that make namespaces.
NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


def profile() -> dict:
    """The `linux.seccomp` object of an OCI config."""
    clone_rules = [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }
        for flag in NAMESPACE_FLAGS
    ]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            *clone_rules,
        ],
    }
