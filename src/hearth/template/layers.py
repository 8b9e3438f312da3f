"""The node's layer store: each layer is a directory of overlay-format changes (whiteouts
as 0/0 character devices, opaque directories by xattr), owned by the host's ids 0..65535,
stacked as lower directories by the container runtime and flattened for microVM images.

A layer is named by its cache key and built once: `ensure` builds it in a temporary
sibling and renames it into place under a lock (`node.disk.cache.ensure_dir`), so two
builds of the same step wait for one another and readers never see half a layer. A
replaced or dropped layer is deleted only once no sandbox has it mounted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from hearth.node.disk.cache import ensure_dir, read_stamp, remove_unmounted

LAYER_KEY = re.compile(r"[0-9a-z-]{8,80}")
FS = "fs"  # the layer's files, one level down so the stamp stays out of them
META = "meta.json"
ORPHANED = "orphaned"  # beside FS: no artifact keeps the layer, only sandboxes using it
# Written into every build sandbox's upper layer by the runtime, not by the step.
SANDBOX_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")


def layer_key(*parts: object) -> str:
    """A cache key from the parts that determine a layer's content."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class LayerStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def of_cache(cls, cache_dir: Path | None = None) -> LayerStore:
        """The layer store in `cache_dir` (default: Hearth's cache directory)."""
        from hearth.config import settings

        return cls((cache_dir or settings().cache_dir) / "layers")

    def path(self, key: str) -> Path:
        """The files of layer `key` (which must exist: see `has`)."""
        if not LAYER_KEY.fullmatch(key):
            raise ValueError(f"invalid layer key {key!r}")
        return self.root / key / FS

    def paths(self, keys: Iterable[str]) -> list[Path]:
        return [self.path(k) for k in keys]

    def has(self, key: str) -> bool:
        return read_stamp(self.root / key) is not None

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [k for k in keys if not self.has(k)]

    def meta(self, key: str) -> dict:
        try:
            return json.loads((self.root / key / META).read_text())
        except (OSError, ValueError):
            return {}

    def ensure(
        self,
        key: str,
        build: Callable[[Path], dict | None],
        *,
        rebuild: str | None = None,
    ) -> Path:
        """The layer `key`, built by `build(fs_dir)` (which may return metadata to keep)
        unless present. `rebuild` (a build id) replaces a present layer: a forced step."""
        self.path(key)  # validates the key
        entry = self.root / key
        if rebuild is None and self.has(key):
            return entry / FS
        stamp = f"{key} {rebuild or ''}".strip()

        def make(tmp: Path) -> None:
            fs = tmp / FS
            fs.mkdir(mode=0o755)
            meta = build(fs)
            (tmp / META).write_text(json.dumps(meta or {}, sort_keys=True))

        return ensure_dir(entry, stamp, make) / FS

    def orphan(self, keys: Iterable[str]) -> None:
        """Mark layers that nothing needs once the sandboxes using them are gone (a
        deleted snapshot's, a finished fork's): `orphans()` names them for removal."""
        for key in keys:
            if self.has(key):
                (self.root / key / ORPHANED).touch()

    def orphans(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{ORPHANED}"))

    def remove(self, keys: Iterable[str]) -> None:
        """Delete these layers, each once no mount namespace uses it (a running
        sandbox's overlay); a layer still in use stays until a later removal."""
        doomed = []
        for key in keys:
            entry = self.root / key
            if LAYER_KEY.fullmatch(key) and entry.is_dir():
                # Named as `cache.ensure_dir` names what it replaces, so that either
                # deletes it once unmounted.
                gone = Path(tempfile.mkdtemp(prefix=f".{key}.old-", dir=self.root))
                entry.rename(gone / key)
                doomed.append(gone)
        remove_unmounted(doomed)


def move_tree(source: Path, dest: Path) -> None:
    """Rename `source` to `dest`; across filesystems, copy with `cp -a` (which keeps
    whiteouts, xattrs and owners, unlike shutil) and remove the source."""
    try:
        os.rename(source, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        subprocess.run(["cp", "-a", str(source), str(dest)], check=True)
        shutil.rmtree(source)


def root_layer(store: LayerStore, kind: str) -> str:
    """The key of the built-in root `kind` ("busybox" or "debian"), built on first use."""
    from hearth.node.disk import rootfs

    key = layer_key("root", *rootfs.root_recipe(kind))
    store.ensure(key, lambda fs: rootfs.build_root(kind, fs))
    return key


def shift_ids(tree: Path, base: int, count: int = 65536) -> None:
    """Give the files a sandbox wrote (owned by its host range base..base+count) the
    ids they had inside it (0..count), so the tree can be any sandbox's lower layer."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            _shift(os.path.join(dirpath, name), base, count)
    _shift(str(tree), base, count)


def _shift(path: str, base: int, count: int) -> None:
    st = os.lstat(path)
    uid = st.st_uid - base if base <= st.st_uid < base + count else st.st_uid
    gid = st.st_gid - base if base <= st.st_gid < base + count else st.st_gid
    if (uid, gid) == (st.st_uid, st.st_gid):
        return
    os.lchown(path, uid, gid)
    # chown clears the set-id bits of files: give them back (sudo needs its setuid).
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(st.st_mode))


def flatten(layers: list[Path], dest: Path) -> None:
    """Apply `layers` (bottom first) into the new directory `dest`, whiteouts and
    opaque directories included: one tree, as the overlay of them shows it. Files are
    hard links into the layers where they share a filesystem (never written through)."""
    subprocess.run(["cp", "-a", "--link", str(layers[0]), str(dest)], check=True)
    for layer in layers[1:]:
        for dirpath, dirnames, filenames in os.walk(layer):
            rel = os.path.relpath(dirpath, layer)
            target_dir = dest / rel
            if rel != "." and _opaque(dirpath) and target_dir.is_dir():
                # An opaque directory hides what the layers below had there.
                shutil.rmtree(target_dir)
                target_dir.mkdir()
                shutil.copystat(dirpath, target_dir, follow_symlinks=False)
                st = os.lstat(dirpath)
                os.lchown(target_dir, st.st_uid, st.st_gid)
            for name in (*dirnames, *filenames):
                source = os.path.join(dirpath, name)
                target = target_dir / name
                st = os.lstat(source)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # a whiteout
                    _remove(target)
                    continue
                if stat.S_ISDIR(st.st_mode) and not os.path.islink(source):
                    if target.is_symlink() or (target.exists() and not target.is_dir()):
                        _remove(target)
                    target.mkdir(exist_ok=True)
                    shutil.copystat(source, target, follow_symlinks=False)
                    os.lchown(target, st.st_uid, st.st_gid)
                    continue
                _remove(target)
                subprocess.run(["cp", "-a", "--link", source, str(target)], check=True)


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def strip_sandbox_files(tree: Path, lower: list[Path]) -> None:
    """Remove what the runtime, not the step, wrote into a build sandbox's upper layer
    (host names, resolver), unless a step changed it; and the directories left empty
    by that which the lower layers already have."""
    for name in SANDBOX_FILES:
        path = tree / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    etc = tree / "etc"
    if etc.is_dir() and not any(etc.iterdir()) and any((layer / "etc").is_dir() for layer in lower):
        etc.rmdir()
