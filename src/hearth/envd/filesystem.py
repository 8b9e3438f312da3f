"""The `filesystem.Filesystem` Connect service (Stat, MakeDir, Move, ListDir, Remove and
the watchers), worded like Go envd 0.6.13."""

from __future__ import annotations

import contextlib
import os
import stat as st

from hearth.envd import paths, watch
from hearth.envd.context import Context
from hearth.envd.entry import entry_from_stat, entry_info, go_error
from hearth.envd.errors import RpcError
from hearth.envd.rpc import Method, server_stream, unary
from hearth.envd.users import User


def resolve(ctx: Context, path: str) -> str:
    """The absolute path a request means (Go's permissions.ExpandAndResolve)."""
    assert ctx.user is not None, "an RPC's context always has its caller's user"
    return expand_for(ctx.user, path, ctx.state.default_workdir)


def expand_for(user: User, path: str, default_workdir: str | None) -> str:
    if path.startswith("~") and len(path) > 1 and path[1] not in "/\\":
        raise RpcError(
            "invalid_argument",
            f"failed to expand path '{path}' for user '{user.name}': "
            "cannot expand user-specific home dir",
        )
    return paths.expand(path, user, default_workdir)


class EnsureDirsError(Exception):
    pass


def ensure_dirs(path: str, uid: int, gid: int) -> None:
    """Create every missing directory of `path` (0755), each chowned to uid:gid (Go's
    permissions.EnsureDirs); EnsureDirsError carries Go's wording."""
    parts: list[str] = []
    p = path
    while p not in ("/", ""):
        parts.append(p)
        p = os.path.dirname(p)
    for sub in reversed(parts):
        try:
            info = os.stat(sub)
        except FileNotFoundError:
            try:
                os.mkdir(sub, 0o755)
            except FileExistsError:
                # Created concurrently (two uploads into one new directory).
                if not os.path.isdir(sub):
                    raise EnsureDirsError(f"path is a file: {sub}") from None
                continue
            except OSError as e:
                raise EnsureDirsError(
                    "failed to create directory: " + go_error("mkdir", sub, e)
                ) from e
            try:
                os.chown(sub, uid, gid)
            except OSError as e:
                raise EnsureDirsError(
                    "failed to chown directory: " + go_error("chown", sub, e)
                ) from e
            continue
        except OSError as e:
            raise EnsureDirsError("failed to stat directory: " + go_error("stat", sub, e)) from e
        if not st.S_ISDIR(info.st_mode):
            raise EnsureDirsError(f"path is a file: {sub}")


# --- handlers ---------------------------------------------------------------------------


def stat(ctx: Context, req: dict) -> dict:
    return {"entry": entry_info(resolve(ctx, req.get("path") or ""))}


def make_dir(ctx: Context, req: dict) -> dict:
    path = resolve(ctx, req.get("path") or "")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        info = None
    except OSError as e:
        raise RpcError("internal", "error getting file info: " + go_error("stat", path, e)) from e
    if info is not None:
        if st.S_ISDIR(info.st_mode):
            raise RpcError("already_exists", f"directory already exists: {path}")
        raise RpcError("invalid_argument", f"path already exists but it is not a directory: {path}")
    assert ctx.user is not None, "an RPC's context always has its caller's user"
    try:
        ensure_dirs(path, ctx.user.uid, ctx.user.gid)
    except EnsureDirsError as e:
        raise RpcError("internal", str(e)) from e
    return {"entry": entry_info(path)}


def move(ctx: Context, req: dict) -> dict:
    source = resolve(ctx, req.get("source") or "")
    destination = resolve(ctx, req.get("destination") or "")
    assert ctx.user is not None, "an RPC's context always has its caller's user"
    try:
        ensure_dirs(os.path.dirname(destination), ctx.user.uid, ctx.user.gid)
    except EnsureDirsError as e:
        raise RpcError("internal", str(e)) from e
    link = f"rename {source} {destination}"
    try:
        src_st = os.lstat(source)
    except FileNotFoundError as e:
        raise RpcError("not_found", f"source file not found: {link}: {_errtext(e)}") from e
    except OSError as e:
        raise RpcError("internal", f"error renaming: {link}: {_errtext(e)}") from e
    # Go's os.Rename refuses to replace an existing directory (EEXIST) unless it is the
    # same file.
    try:
        dst_st = os.lstat(destination)
    except OSError:
        dst_st = None
    if (
        dst_st is not None
        and st.S_ISDIR(dst_st.st_mode)
        and (source == destination or not os.path.samestat(src_st, dst_st))
    ):
        raise RpcError("internal", f"error renaming: {link}: file exists")
    try:
        os.rename(source, destination)
    except FileNotFoundError as e:
        raise RpcError("not_found", f"source file not found: {link}: {_errtext(e)}") from e
    except OSError as e:
        raise RpcError("internal", f"error renaming: {link}: {_errtext(e)}") from e
    return {"entry": entry_info(destination)}


def remove(ctx: Context, req: dict) -> dict:
    path = resolve(ctx, req.get("path") or "")
    try:
        _remove_all(path)
    except OSError as e:
        raise RpcError(
            "internal", "error removing file or directory: " + go_error("unlinkat", path, e)
        ) from e
    return {}


def _remove_all(path: str) -> None:
    """os.RemoveAll: a missing path is fine, a symlink is removed and not followed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if st.S_ISDIR(info.st_mode):
        import shutil

        def onerror(func, p, exc_info):
            if not isinstance(exc_info[1], FileNotFoundError):
                raise exc_info[1]

        shutil.rmtree(path, onerror=onerror)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def list_dir(ctx: Context, req: dict) -> dict:
    depth = int(req.get("depth") or 0) or 1
    requested = resolve(ctx, req.get("path") or "")
    try:
        resolved = os.path.realpath(requested, strict=True)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise RpcError(
            "not_found", "directory not found: " + go_error("lstat", requested, e)
        ) from e
    except (RuntimeError, OSError) as e:
        import errno

        if isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP:
            raise RpcError(
                "failed_precondition", f'cyclic symlink or chain >255 links at "{requested}"'
            ) from e
        message = "error resolving symlink: " + go_error("lstat", requested, e)
        raise RpcError("internal", message) from e
    try:
        info = os.stat(resolved)
    except FileNotFoundError as e:
        raise RpcError("not_found", "directory not found: " + go_error("stat", resolved, e)) from e
    except OSError as e:
        message = "error getting file info: " + go_error("stat", resolved, e)
        raise RpcError("internal", message) from e
    if not st.S_ISDIR(info.st_mode):
        raise RpcError("invalid_argument", f"path is not a directory: {requested}")
    entries: list[dict] = []
    names: dict = {}
    try:
        _walk(resolved, requested, depth, entries, names)
    except OSError as e:
        where = e.filename or resolved
        message = f"error reading directory {resolved}: " + go_error("open", where, e)
        raise RpcError("internal", message) from e
    return {"entries": entries}


def _walk(real: str, shown: str, depth: int, out: list[dict], names: dict) -> None:
    """filepath.WalkDir order: lexical, depth-first pre-order, not following links."""
    with os.scandir(real) as it:
        children = sorted(it, key=lambda d: d.name)
    for child in children:
        try:
            lst = child.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while listing
        shown_path = os.path.join(shown, child.name)
        out.append(entry_from_stat(shown_path, lst, names))
        if depth > 1 and st.S_ISDIR(lst.st_mode):
            _walk(child.path, shown_path, depth - 1, out, names)


def _errtext(e: OSError) -> str:
    text = e.strerror or str(e)
    return text[0].lower() + text[1:] if text else text


METHODS: dict[str, Method] = {
    "Stat": unary(stat, "filesystem.StatRequest", "filesystem.StatResponse"),
    "MakeDir": unary(make_dir, "filesystem.MakeDirRequest", "filesystem.MakeDirResponse"),
    "Move": unary(move, "filesystem.MoveRequest", "filesystem.MoveResponse"),
    "ListDir": unary(list_dir, "filesystem.ListDirRequest", "filesystem.ListDirResponse"),
    "Remove": unary(remove, "filesystem.RemoveRequest", "filesystem.RemoveResponse"),
    "WatchDir": server_stream(
        watch.watch_dir, "filesystem.WatchDirRequest", "filesystem.WatchDirResponse"
    ),
    "CreateWatcher": unary(
        watch.create_watcher,
        "filesystem.CreateWatcherRequest",
        "filesystem.CreateWatcherResponse",
    ),
    "GetWatcherEvents": unary(
        watch.get_watcher_events,
        "filesystem.GetWatcherEventsRequest",
        "filesystem.GetWatcherEventsResponse",
    ),
    "RemoveWatcher": unary(
        watch.remove_watcher,
        "filesystem.RemoveWatcherRequest",
        "filesystem.RemoveWatcherResponse",
    ),
}
