"""Directory watchers on inotify: the streaming WatchDir and the polled
CreateWatcher / GetWatcherEvents / RemoveWatcher trio.

Events are derived from inotify masks the way Go's fsnotify (e2b-dev fork, used by envd
0.6.13) derives them, one FilesystemEvent per op bit, in fsnotify's order CREATE, RENAME,
CHMOD, WRITE, REMOVE:

    IN_CREATE, IN_MOVED_TO        -> CREATE
    IN_MOVED_FROM, IN_MOVE_SELF   -> RENAME
    IN_ATTRIB                     -> CHMOD
    IN_MODIFY                     -> WRITE   (IN_CLOSE_WRITE is not watched by fsnotify)
    IN_DELETE, IN_DELETE_SELF     -> REMOVE

In recursive mode a directory that appears (created or moved in) is watched at once and
its existing contents are reported as CREATE events, as fsnotify does for `mkdir -p`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque

from hearth.envd.context import Context
from hearth.envd.entry import entry_info, go_error
from hearth.envd.errors import RpcError

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
WATCH_MASK = (IN_CREATE | IN_MODIFY | IN_DELETE | IN_DELETE_SELF | IN_MOVED_TO | IN_MOVED_FROM) | (
    IN_MOVE_SELF | IN_ATTRIB
)

CREATE = "EVENT_TYPE_CREATE"
WRITE = "EVENT_TYPE_WRITE"
REMOVE = "EVENT_TYPE_REMOVE"
RENAME = "EVENT_TYPE_RENAME"
CHMOD = "EVENT_TYPE_CHMOD"
_WITH_ENTRY = (CREATE, WRITE, CHMOD)

# Filesystem types Go's IsPathOnNetworkMount rejects (NFS, CIFS/SMB and FUSE magics).
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse", "fuseblk"}


def _ops(mask: int) -> list[str]:
    ops = []
    if mask & (IN_CREATE | IN_MOVED_TO):
        ops.append(CREATE)
    if mask & (IN_MOVE_SELF | IN_MOVED_FROM):
        ops.append(RENAME)
    if mask & IN_ATTRIB:
        ops.append(CHMOD)
    if mask & IN_MODIFY:
        ops.append(WRITE)
    if mask & (IN_DELETE | IN_DELETE_SELF):
        ops.append(REMOVE)
    return ops


class DirWatcher:
    """One inotify instance watching `root` (and, when recursive, every directory below
    it). `read_events()` turns what is pending into FilesystemEvent dicts."""

    def __init__(self, root: str, recursive: bool, include_entry: bool) -> None:
        import inotify_simple
        from inotify_simple import INotify

        if inotify_simple._libc is None:
            # Its own lookup runs ldconfig, which a sandbox's root may not have;
            # the interpreter has libc loaded already.
            import ctypes

            inotify_simple._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.root = root
        self.recursive = recursive
        self.include_entry = include_entry
        self.wd_path: dict[int, str] = {}
        self.path_wd: dict[str, int] = {}
        self.ino = INotify(nonblocking=True)
        try:
            self._register(root)
            if recursive:
                self._walk(root, None)
        except BaseException:
            self.ino.close()
            raise

    def fileno(self) -> int:
        return self.ino.fileno()

    def close(self) -> None:
        if not self.ino.closed:
            self.ino.close()

    # -- watch bookkeeping --

    def _register(self, path: str) -> None:
        wd = self.ino.add_watch(path, WATCH_MASK)
        old = self.wd_path.get(wd)
        if old is not None and old != path:
            # The same directory under a new name (moved inside the tree): rename the
            # watch and every watch below it.
            for p, w in list(self.path_wd.items()):
                if p == old or p.startswith(old + "/"):
                    new = path + p[len(old) :]
                    del self.path_wd[p]
                    self.path_wd[new] = w
                    self.wd_path[w] = new
        self.wd_path[wd] = path
        self.path_wd[path] = wd

    def _forget(self, path: str, rm: bool) -> None:
        for p, w in list(self.path_wd.items()):
            if p == path or p.startswith(path.rstrip("/") + "/"):
                del self.path_wd[p]
                self.wd_path.pop(w, None)
                if rm:
                    with contextlib.suppress(OSError):
                        self.ino.rm_watch(w)

    def _walk(self, top: str, out: list | None) -> None:
        """Watch the directories below `top` (lexical pre-order); with `out`, report each
        entry found as an artificial CREATE."""
        try:
            with os.scandir(top) as it:
                children = sorted(it, key=lambda d: d.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError:
            if out is None:
                raise
            return
        for child in children:
            if out is not None:
                out.append((child.path, [CREATE]))
            try:
                is_dir = child.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                try:
                    self._register(child.path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError:
                    if out is None:
                        raise
                    continue
                self._walk(child.path, out)

    # -- events --

    def read_events(self) -> list[dict]:
        """FilesystemEvents for everything pending (non-blocking)."""
        if self.ino.closed:
            return []
        raw: list[tuple[str, list[str]]] = []
        for ev in self.ino.read(timeout=0):
            self._handle(ev, raw)
        return [self._event(name, op) for name, ops in raw for op in ops]

    def _handle(self, ev, out: list) -> None:
        if ev.mask & IN_Q_OVERFLOW:
            raise RpcError("internal", "watcher error: fsnotify: queue or buffer overflow")
        path = self.wd_path.get(ev.wd)
        if path is None:
            return
        name = os.path.join(path, ev.name) if ev.name else path
        if ev.mask & (IN_IGNORED | IN_UNMOUNT):
            if self.path_wd.get(path) == ev.wd:
                del self.path_wd[path]
            del self.wd_path[ev.wd]
            return
        if ev.mask & IN_DELETE_SELF:
            self.wd_path.pop(ev.wd, None)
            if self.path_wd.get(path) == ev.wd:
                del self.path_wd[path]
        if ev.mask & IN_MOVE_SELF:
            if self.recursive and path != self.root:
                return  # reported by the parent's IN_MOVED_FROM
            self._forget(path, rm=True)
            if self.recursive:
                out.append((path, [RENAME]))
                return
        if ev.mask & IN_DELETE_SELF and os.path.dirname(path) in self.path_wd:
            return  # the parent reports it
        ops = _ops(ev.mask)
        if not ops:
            return
        out.append((name, ops))
        if self.recursive and ev.mask & IN_ISDIR:
            if ev.mask & IN_MOVED_FROM:
                self._forget(name, rm=True)  # left (or moves within) the tree
            elif CREATE in ops:
                try:
                    self._register(name)
                except OSError:
                    return  # already gone again
                self._walk(name, out)

    def _relative(self, name: str) -> str:
        root = self.root.rstrip("/")
        if name == self.root or name == root:
            return "."
        if name.startswith(root + "/"):
            return name[len(root) + 1 :]
        return os.path.relpath(name, self.root)

    def _event(self, name: str, op: str) -> dict:
        event: dict = {"name": self._relative(name), "type": op}
        if self.include_entry and op in _WITH_ENTRY:
            with contextlib.suppress(RpcError):  # gone already: no entry
                event["entry"] = entry_info(name)
        return event


# --- request handling -------------------------------------------------------------------


def _unescape_mount(field: str) -> str:
    """Undo mountinfo's octal escapes (`\\040` for a space)."""
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _is_network_mount(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether `path` lives on NFS/CIFS/SMB/FUSE, per the mount table."""
    try:
        real = os.path.realpath(path)
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    best, best_len = "", -1
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split(" ")
        if not sep or len(fields) < 5:
            continue
        mount = _unescape_mount(fields[4])
        prefix = mount.rstrip("/") + "/"
        if (real == mount or real.startswith(prefix)) and len(mount) >= best_len:
            best, best_len = right.split(" ", 1)[0], len(mount)
    return best in _NETWORK_FS or best.startswith("fuse.")


def open_watcher(ctx: Context, req: dict) -> DirWatcher:
    """Validate a WatchDir/CreateWatcher request and start watching."""
    from hearth.envd.filesystem import resolve

    path = resolve(ctx, req.get("path") or "")
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise RpcError("not_found", f"path {path} not found: " + go_error("stat", path, e)) from e
    except OSError as e:
        message = f"error statting path {path}: " + go_error("stat", path, e)
        raise RpcError("internal", message) from e
    import stat as st

    if not st.S_ISDIR(info.st_mode):
        raise RpcError("invalid_argument", f"path {path} not a directory")
    if not req.get("allowNetworkMounts") and _is_network_mount(path):
        raise RpcError("invalid_argument", f"cannot watch path on network filesystem: {path}")
    try:
        return DirWatcher(path, bool(req.get("recursive")), bool(req.get("includeEntry")))
    except OSError as e:
        raise RpcError(
            "internal",
            f"error adding path {path} to watcher: " + go_error("inotify_add_watch", path, e),
        ) from e


class WatchStream:
    """The WatchDir response stream: `{"start":{}}`, then `{"filesystem": event}` as
    events come and `{"keepalive":{}}` after each quiet interval. `close()` (called by the
    transport when the client leaves, or on exhaustion) releases the inotify descriptor."""

    def __init__(self, watcher: DirWatcher, ctx: Context) -> None:
        self.watcher: DirWatcher | None = watcher
        self.interval = ctx.keepalive_interval()
        self.deadline = ctx.deadline
        self.pending: deque[dict] = deque()
        self.started = False
        self.next_keepalive = 0.0

    def __iter__(self) -> WatchStream:
        return self

    def __next__(self) -> dict:
        import select

        w = self.watcher
        if w is None:
            raise StopIteration
        if not self.started:
            self.started = True
            self.next_keepalive = time.monotonic() + self.interval
            return {"start": {}}
        try:
            while True:
                if self.pending:
                    self.next_keepalive = time.monotonic() + self.interval
                    return {"filesystem": self.pending.popleft()}
                now = time.monotonic()
                if self.deadline is not None and now >= self.deadline:
                    raise RpcError("deadline_exceeded", "context deadline exceeded")
                if now >= self.next_keepalive:
                    self.next_keepalive = now + self.interval
                    return {"keepalive": {}}
                until = self.next_keepalive
                if self.deadline is not None:
                    until = min(until, self.deadline)
                ready, _, _ = select.select([w], [], [], max(0.0, until - now))
                if ready:
                    self.pending.extend(w.read_events())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        w, self.watcher = self.watcher, None
        if w is not None:
            w.close()

    def __del__(self) -> None:
        self.close()


def watch_dir(ctx: Context, req: dict) -> WatchStream:
    return WatchStream(open_watcher(ctx, req), ctx)


class PolledWatcher:
    """A watcher whose events buffer until GetWatcherEvents takes them. A thread reads
    inotify; a wake pipe lets RemoveWatcher stop it at once."""

    def __init__(self, watcher: DirWatcher) -> None:
        self.watcher = watcher
        self.events: list[dict] = []
        self.error: RpcError | None = None
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        self.thread = threading.Thread(target=self._run, name="envd-watcher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import select

        waited: list[DirWatcher | int] = [self.watcher, self.wake_r]
        try:
            while True:
                ready, _, _ = select.select(waited, [], [])
                if self.wake_r in ready:
                    return
                events = self.watcher.read_events()
                if events:
                    with self.lock:
                        self.events.extend(events)
        except RpcError as e:
            self.error = e
        except Exception as e:  # noqa: BLE001 - reported on the next poll
            self.error = RpcError("internal", f"watcher error: {e}")
        finally:
            self.watcher.close()
            os.close(self.wake_r)

    def take(self) -> list[dict]:
        if self.error is not None:
            raise self.error
        with self.lock:
            events, self.events = self.events, []
        return events

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # the thread may have ended already
            os.write(self.wake_w, b"x")
        self.thread.join(timeout=5)
        os.close(self.wake_w)


_watchers: dict[str, PolledWatcher] = {}
_watchers_lock = threading.Lock()


def create_watcher(ctx: Context, req: dict) -> dict:
    watcher = PolledWatcher(open_watcher(ctx, req))
    watcher_id = "w" + os.urandom(8).hex()
    with _watchers_lock:
        _watchers[watcher_id] = watcher
    return {"watcherId": watcher_id}


def _lookup(req: dict) -> tuple[str, PolledWatcher]:
    watcher_id = req.get("watcherId") or ""
    with _watchers_lock:
        watcher = _watchers.get(watcher_id)
    if watcher is None:
        raise RpcError("not_found", f"watcher with id {watcher_id} not found")
    return watcher_id, watcher


def get_watcher_events(ctx: Context, req: dict) -> dict:
    _, watcher = _lookup(req)
    return {"events": watcher.take()}


def remove_watcher(ctx: Context, req: dict) -> dict:
    watcher_id, watcher = _lookup(req)
    with _watchers_lock:
        if _watchers.pop(watcher_id, None) is None:
            return {}  # removed concurrently
    watcher.stop()
    return {}


def remove_all_watchers() -> None:
    """Stop every polled watcher (for shutdown and tests)."""
    with _watchers_lock:
        watchers = list(_watchers.values())
        _watchers.clear()
    for watcher in watchers:
        watcher.stop()
