"""The OCI runtime binary (crun or runc): which one, and how to call it on this host.

Both are daemonless: `run` stays in the foreground as the container's parent (it reaps
the container's init and deletes the container's state and cgroups when it ends), and
the other commands read the state directory given with `--root`.

crun is preferred: it starts a container in about half runc's time and its foreground
process is a small C program (measured ~0.7 MiB PSS per sandbox, ~0.3 MiB of it private)
where runc's is a Go one. crun refuses to run on a host with hybrid cgroups (v1
controllers plus a cgroup2 mount that holds a controller). It is then run in a private
mount namespace in which the cgroup2 mount is unmounted, which changes nothing for the
host (`spec/runtime-probe.md` §5); `run` gets that namespace from the launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CGROUP2_HYBRID_MOUNT = "/sys/fs/cgroup/unified"
PREFERENCE = ("crun", "runc")


class OciRuntimeError(RuntimeError):
    """The OCI runtime is missing or a command of it failed."""


@dataclass(frozen=True)
class OciRuntime:
    name: str  # "crun" or "runc"
    binary: str
    state_root: Path  # --root: where the runtime keeps its containers' state
    hide_cgroup2: bool  # run it with the hybrid cgroup2 mount unmounted (crun)

    def command(self, *args: str) -> list[str]:
        """argv for `runtime --root STATE args...`, as run from a private mount namespace
        where needed (see `wrapped`)."""
        return [self.binary, "--root", str(self.state_root), *args]

    def wrapped(self, *args: str) -> list[str]:
        """argv that runs `command(*args)` from the host: inside a throwaway mount
        namespace without the cgroup2 mount when the runtime needs that."""
        argv = self.command(*args)
        if not self.hide_cgroup2:
            return argv
        script = f'umount {CGROUP2_HYBRID_MOUNT} 2>/dev/null; exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]

    def state(self, container_id: str) -> dict | None:
        """The runtime's state of a container (`status`, `pid`, ...), or None if it does
        not know the container."""
        if not (self.state_root / container_id).exists():
            return None
        done = subprocess.run(
            self.wrapped("state", container_id), capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def delete(self, container_id: str) -> None:
        """Kill the container if it runs and remove its state and cgroups. A container
        the runtime does not know is no error."""
        if not (self.state_root / container_id).exists():
            return
        done = subprocess.run(
            self.wrapped("delete", "--force", container_id),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0 and (self.state_root / container_id).exists():
            raise OciRuntimeError(
                f"{self.name} delete {container_id} failed: {done.stderr.strip()}"
            )

    def pause(self, container_id: str) -> None:
        """Freeze every process of the container (its cgroup's freezer)."""
        self._run_checked("pause", container_id)

    def resume(self, container_id: str) -> None:
        """Thaw a container `pause` froze."""
        self._run_checked("resume", container_id)

    def _run_checked(self, command: str, container_id: str) -> None:
        done = subprocess.run(
            self.wrapped(command, container_id), capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise OciRuntimeError(
                f"{self.name} {command} {container_id} failed: {done.stderr.strip()}"
            )

    def containers(self) -> list[str]:
        """Ids of the containers the runtime has state for."""
        try:
            return sorted(e for e in os.listdir(self.state_root) if not e.startswith("."))
        except FileNotFoundError:
            return []


def cgroups_are_hybrid() -> bool:
    """True if cgroup v1 controllers are mounted beside a cgroup2 mount that holds one
    or more controllers (crun's "hybrid mode")."""
    try:
        controllers = Path(CGROUP2_HYBRID_MOUNT, "cgroup.controllers").read_text().split()
    except OSError:
        return False
    return bool(controllers) and os.path.ismount("/sys/fs/cgroup/memory")


def detect(state_root: Path, prefer: str | None = None) -> OciRuntime:
    """The OCI runtime to use: `prefer` if given, else crun, else runc."""
    names = (prefer,) if prefer else PREFERENCE
    for name in names:
        binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if not binary:
            continue
        done = subprocess.run([binary, "--version"], capture_output=True, text=True)
        if done.returncode != 0:
            continue
        hide = name == "crun" and cgroups_are_hybrid()
        if hide and not shutil.which("unshare"):
            continue
        return OciRuntime(name=name, binary=binary, state_root=state_root, hide_cgroup2=hide)
    wanted = prefer or " or ".join(PREFERENCE)
    raise OciRuntimeError(f"no usable OCI runtime: install {wanted} (apt-get install crun)")
