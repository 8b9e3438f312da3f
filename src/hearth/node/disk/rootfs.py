"""The built-in roots templates start from: a static busybox, or Debian from debootstrap.

The template builder keeps each as a layer (`hearth.template`); the `base` template is
the Debian root plus the steps of its recipe (`template/builtins.py`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

from hearth.node.disk.cache import progress

# Bump when anything a root holds changes: it is part of the root's layer key.
RECIPE_VERSION = 1

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("sudo", "procps", "python3")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

USER_NAME = "user"
USER_ID = 1000
HOSTNAME = "hearth"

# Everything the E2B SDK starts goes through `/bin/bash -l -c CMD` (and `/bin/bash -i -l`
# for PTYs); busybox has no bash applet, so its `sh` (ash) stands in with the same flags.
BASH_SHIM = '#!/bin/sh\nexec /bin/busybox sh "$@"\n'

BASHRC = """\
# ~/.bashrc: read by interactive shells.
case $- in *i*) ;; *) return ;; esac
PS1='\\u@\\h:\\w\\$ '
"""

PROFILE = """\
# ~/.profile: read by login shells.
if [ -n "$BASH_VERSION" ] && [ -f "$HOME/.bashrc" ]; then
    . "$HOME/.bashrc"
fi
if [ -d "$HOME/.local/bin" ]; then
    PATH="$HOME/.local/bin:$PATH"
fi
"""

HOSTS = f"""\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
127.0.1.1\t{HOSTNAME}
"""

# Mount points the runtimes fill; they exist empty in the image so it can stay read-only.
MOUNT_POINTS = ("proc", "dev", "sys", "opt/hearth/envd")


def root_recipe(kind: str) -> tuple[object, ...]:
    """What determines the built-in root `kind` ("busybox" or "debian"): its cache key."""
    if kind == "busybox":
        busybox = static_busybox()
        return (RECIPE_VERSION, kind, hashlib.sha256(busybox.read_bytes()).hexdigest())
    if kind == "debian":
        return (RECIPE_VERSION, kind, DEBIAN_SUITE, DEBIAN_PACKAGES)
    raise ValueError(f"unknown built-in root {kind!r} (busybox or debian)")


def build_root(kind: str, root: Path) -> None:
    """Build the built-in root `kind` into the empty directory `root`."""
    root_recipe(kind)  # validates the kind
    started = time.monotonic()
    progress(f"building the {kind} root")
    root.chmod(0o755)
    if kind == "busybox":
        _build_busybox(root, static_busybox())
    else:
        _build_debian(root)
    _finish(root)
    progress(f"{kind} root ready in {time.monotonic() - started:.1f} s")


def _build_busybox(root: Path, busybox: Path) -> None:
    """A root with nothing but a static busybox, its applet links and a bash shim."""
    (root / "bin").mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    listing = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout
    for applet in listing.split():
        link = root / applet
        if link.name in ("busybox", "linuxrc"):  # linuxrc: the initrd entry point
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    bash = root / "bin" / "bash"
    bash.unlink(missing_ok=True)
    bash.write_text(BASH_SHIM)
    bash.chmod(0o755)
    for name in ("etc", "root", "home"):
        (root / name).mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        f"{USER_NAME}:x:{USER_ID}:{USER_ID}::/home/{USER_NAME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (root / "etc" / "group").write_text(
        f"root:x:0:\ntty:x:5:\nusers:x:100:\n{USER_NAME}:x:{USER_ID}:\nnogroup:x:65534:\n"
    )
    (root / "home" / USER_NAME).mkdir()


def _build_debian(root: Path) -> None:
    """Debian minbase from the archive, with `user` allowed to sudo without a password."""
    mirror = _debian_mirror()
    log = root.parent / "debootstrap.log"
    progress(f"debootstrap {DEBIAN_SUITE} from {mirror} (a minute or two; log: {log})")
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    command = [
        debootstrap,
        "--variant=minbase",
        f"--include={','.join(DEBIAN_PACKAGES)}",
        DEBIAN_SUITE,
        str(root),
        mirror,
    ]
    try:
        with log.open("wb") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(f"debootstrap failed ({done.returncode}):\n" + "\n".join(tail))
    finally:
        log.unlink(missing_ok=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for args in (
        ["groupadd", "--gid", str(USER_ID), USER_NAME],
        ["useradd", "--create-home", "--uid", str(USER_ID), "--gid", str(USER_ID),
         "--shell", "/bin/bash", USER_NAME],
    ):  # fmt: skip
        subprocess.run(["chroot", str(root), *args], check=True, env=env)
    sudoers = root / "etc" / "sudoers.d" / USER_NAME
    sudoers.write_text(f"{USER_NAME} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    # Package caches are dead weight in a template's lower layer.
    for cache in ("var/cache/apt", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


def _finish(root: Path) -> None:
    """What both kinds share: the user's home, /tmp, host names and empty mount points."""
    home = root / "home" / USER_NAME
    home.mkdir(parents=True, exist_ok=True)
    for name, text in ((".bashrc", BASHRC), (".profile", PROFILE)):
        path = home / name
        if not path.exists():
            path.write_text(text)
        path.chmod(0o644)
        os.chown(path, USER_ID, USER_ID)
    home.chmod(0o755)
    os.chown(home, USER_ID, USER_ID)
    (root / "root").chmod(0o700)
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    (root / "etc" / "hostname").write_text(HOSTNAME + "\n")
    (root / "etc" / "hosts").write_text(HOSTS)
    for name in MOUNT_POINTS:
        (root / name).mkdir(parents=True, exist_ok=True)


def static_busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox", shutil.which("busybox")):
        if candidate and os.path.isfile(candidate) and not _has_interpreter(Path(candidate)):
            return Path(candidate)
    raise RuntimeError("no static busybox found (apt-get install busybox-static)")


def _has_interpreter(path: Path) -> bool:
    """True if the ELF file asks for a dynamic loader (PT_INTERP), i.e. is not static."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
            return True
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == 3 for i in range(phnum))


def _debian_mirror() -> str:
    """The host's own Debian mirror for the suite, so builds work where only it is reachable."""
    sources = Path("/etc/apt")
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".list":
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) == DEBIAN_SUITE:
                    return m.group(1)
        else:
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    key, _, value = line.partition(":")
                    if not line.startswith("#") and value:
                        fields[key.strip().lower()] = value.strip()
                if (
                    "deb" in fields.get("types", "").split()
                    and DEBIAN_SUITE in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                    and fields.get("uris")
                ):
                    return fields["uris"].split()[0]
    return DEFAULT_MIRROR
