"""EntryInfo as envd reports it, and the `user.e2b.*` xattr metadata of files.

The shape follows Go envd 0.6.13 (`filesystem.GetEntryInfo`): everything is taken from
`lstat` of the path (name, size, owner, mtime and the `permissions` string, which starts
with `L` for a symlink), except that a symlink reports the **type and permission bits of
its fully resolved target** and carries that target in `symlinkTarget`. A link that cannot
be resolved (dangling, loop) keeps its own path as `symlinkTarget`, type UNSPECIFIED and
mode 0, as Go does.
"""

from __future__ import annotations

import os
import stat as st

from hearth.envd import users
from hearth.envd.errors import RpcError

METADATA_PREFIX = "user.e2b."
MAX_METADATA_KEY_LEN = 255 - len(METADATA_PREFIX)
MAX_METADATA_TOTAL_LEN = 4096

FILE = "FILE_TYPE_FILE"
DIRECTORY = "FILE_TYPE_DIRECTORY"
UNSPECIFIED = "FILE_TYPE_UNSPECIFIED"

# Go's os.FileMode.String(): type letters "dalTLDpSugct?" (one per mode bit, in this
# order) then rwx triplets. Linux stat maps onto d, L, D, p, S, u, g, c, t.
_WDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def go_error(op: str, path: str, exc: OSError) -> str:
    """An OSError worded like Go's *PathError: `lstat /x: no such file or directory`."""
    text = exc.strerror or str(exc)
    if text:
        text = text[0].lower() + text[1:]
    return f"{op} {path}: {text}"


def permissions_string(mode: int) -> str:
    """Go's FileMode.String() for a Linux st_mode."""
    fmt = st.S_IFMT(mode)
    letters = ""
    if fmt == st.S_IFDIR:
        letters += "d"
    if fmt == st.S_IFLNK:
        letters += "L"
    if fmt in (st.S_IFBLK, st.S_IFCHR):
        letters += "D"
    if fmt == st.S_IFIFO:
        letters += "p"
    if fmt == st.S_IFSOCK:
        letters += "S"
    if mode & st.S_ISUID:
        letters += "u"
    if mode & st.S_ISGID:
        letters += "g"
    if fmt == st.S_IFCHR:
        letters += "c"
    if mode & st.S_ISVTX:
        letters += "t"
    rwx = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return (letters or "-") + rwx


def file_type(mode: int) -> str:
    if st.S_ISREG(mode):
        return FILE
    if st.S_ISDIR(mode):
        return DIRECTORY
    return UNSPECIFIED


def timestamp(ns: int) -> str:
    """google.protobuf.Timestamp as proto-JSON: RFC 3339 in UTC with 0, 3, 6 or 9
    fractional digits, like protojson."""
    import time

    secs, nanos = divmod(ns, 1_000_000_000)
    t = time.gmtime(secs)
    out = f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}"
    if nanos:
        if nanos % 1_000_000 == 0:
            out += f".{nanos // 1_000_000:03d}"
        elif nanos % 1000 == 0:
            out += f".{nanos // 1000:06d}"
        else:
            out += f".{nanos:09d}"
    return out + "Z"


def http_date(secs: float) -> str:
    """An RFC 7231 IMF-fixdate (`Mon, 02 Jan 2006 15:04:05 GMT`), locale-independent."""
    import time

    t = time.gmtime(int(secs))
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return (
        f"{_WDAYS[t.tm_wday]}, {t.tm_mday:02d} {months[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def entry_from_stat(path: str, lst: os.stat_result, names: dict | None = None) -> dict:
    """EntryInfo for `path` whose lstat result is `lst`. `names` caches uid/gid -> name
    lookups across a listing."""
    mode = lst.st_mode
    target: str | None = None
    if st.S_ISLNK(mode):
        try:
            target = os.path.realpath(path, strict=True)
        except (OSError, RuntimeError):
            target = path
        try:
            tst = os.stat(target)
        except OSError:
            kind, perm = UNSPECIFIED, 0
        else:
            kind, perm = file_type(tst.st_mode), st.S_IMODE(tst.st_mode) & 0o777
    else:
        kind, perm = file_type(mode), mode & 0o777
    if names is None:
        names = {}
    owner = names.get(("u", lst.st_uid))
    if owner is None:
        owner = names[("u", lst.st_uid)] = users.name_of_uid(lst.st_uid)
    group = names.get(("g", lst.st_gid))
    if group is None:
        group = names[("g", lst.st_gid)] = users.name_of_gid(lst.st_gid)
    entry = {
        "name": os.path.basename(path.rstrip("/")) or "/",
        "type": kind,
        "path": path,
        "size": lst.st_size,
        "mode": perm,
        "permissions": permissions_string(mode),
        "owner": owner,
        "group": group,
        "modifiedTime": timestamp(lst.st_mtime_ns),
    }
    if target is not None:
        entry["symlinkTarget"] = target
    metadata = read_metadata(path)
    if metadata:
        entry["metadata"] = metadata
    return entry


def entry_info(path: str, names: dict | None = None) -> dict:
    """EntryInfo of `path` (not following a final symlink); RpcError not_found/internal."""
    try:
        lst = os.lstat(path)
    except FileNotFoundError as e:
        raise RpcError("not_found", "file not found: " + go_error("lstat", path, e)) from e
    except NotADirectoryError as e:
        raise RpcError("not_found", "file not found: " + go_error("lstat", path, e)) from e
    except OSError as e:
        raise RpcError("internal", "error getting file info: " + go_error("lstat", path, e)) from e
    return entry_from_stat(path, lst, names)


# --- metadata xattrs -------------------------------------------------------------------


def _unsupported(e: OSError) -> bool:
    import errno

    return e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)


def read_metadata(path: str | int) -> dict[str, str] | None:
    """The `user.e2b.*` xattrs of `path` (a symlink is followed) as {key: value}; None
    when there are none or they cannot be read. Non-UTF-8 entries are skipped."""
    try:
        names = os.listxattr(path)
    except OSError:
        return None
    out: dict[str, str] = {}
    for name in names:
        if not name.startswith(METADATA_PREFIX):
            continue
        try:
            raw = os.getxattr(path, name)
        except OSError:
            continue
        key = name[len(METADATA_PREFIX) :]
        try:
            key.encode("utf-8")
            out[key] = raw.decode("utf-8")
        except UnicodeError:
            continue
    return out or None


def validate_metadata(metadata: dict[str, str]) -> str | None:
    """Why `metadata` cannot be stored, or None (keys/values printable ASCII, sizes)."""
    total = 0
    for key, value in metadata.items():
        if not key:
            return "metadata key must not be empty"
        if len(key.encode("utf-8", "surrogateescape")) > MAX_METADATA_KEY_LEN:
            return f'metadata key "{key}" exceeds {MAX_METADATA_KEY_LEN} bytes'
        for label, text in (("key", key), (f'value for key "{key}"', value)):
            for i, ch in enumerate(text.encode("utf-8", "surrogateescape")):
                if ch < 0x20 or ch > 0x7E:
                    return (
                        f"metadata {label} contains non-printable-ASCII byte 0x{ch:02x} "
                        f"at offset {i}"
                    )
        total += len(METADATA_PREFIX) + len(key) + len(value)
    if total > MAX_METADATA_TOTAL_LEN:
        return f"total metadata size {total} exceeds {MAX_METADATA_TOTAL_LEN} bytes"
    return None


def replace_metadata(target: str | int, metadata: dict[str, str] | None) -> None:
    """Make `metadata` the file's whole `user.e2b.*` set: other keys are removed, so an
    empty dict clears it. `target` is a path or an open descriptor. A filesystem without
    xattr support is tolerated when there is nothing to store."""
    metadata = metadata or {}
    try:
        existing = os.listxattr(target)
    except OSError as e:
        if _unsupported(e) and not metadata:
            return
        raise
    for name in existing:
        if name.startswith(METADATA_PREFIX) and name[len(METADATA_PREFIX) :] not in metadata:
            try:
                os.removexattr(target, name)
            except OSError as e:
                import errno

                if e.errno != errno.ENODATA:
                    raise
    for key, value in metadata.items():
        os.setxattr(target, METADATA_PREFIX + key, value.encode("utf-8", "surrogateescape"))
