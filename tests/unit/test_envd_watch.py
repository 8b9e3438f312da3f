"""inotify watchers: the WatchDir stream and the polled watcher API (hearth.envd.watch)."""

from __future__ import annotations

import os
import time

import pytest

from hearth.envd import watch
from hearth.envd.context import Context
from hearth.envd.errors import RpcError
from hearth.envd.state import EnvdState
from hearth.envd.users import User


@pytest.fixture
def ctx(tmp_path):
    user = User("root", 0, 0, str(tmp_path), "/bin/sh", (0,))
    return Context(EnvdState(), user, {"keepalive-ping-interval": "1"}, None)


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    watch.remove_all_watchers()


def collect(stream, until, timeout=5.0) -> list[dict]:
    """Filesystem events from `stream` until `until(events)` holds (keepalives skipped)."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = next(stream)
        if "filesystem" in msg:
            events.append(msg["filesystem"])
            if until(events):
                return events
    raise AssertionError(f"condition not met; got {events}")


def has(name, kind):
    return lambda events: any(e["name"] == name and e["type"] == kind for e in events)


def test_ops_follow_fsnotify_mapping():
    assert watch._ops(watch.IN_CREATE) == ["EVENT_TYPE_CREATE"]
    assert watch._ops(watch.IN_MOVED_TO) == ["EVENT_TYPE_CREATE"]
    assert watch._ops(watch.IN_MODIFY) == ["EVENT_TYPE_WRITE"]
    assert watch._ops(watch.IN_DELETE) == ["EVENT_TYPE_REMOVE"]
    assert watch._ops(watch.IN_DELETE_SELF) == ["EVENT_TYPE_REMOVE"]
    assert watch._ops(watch.IN_MOVED_FROM) == ["EVENT_TYPE_RENAME"]
    assert watch._ops(watch.IN_MOVE_SELF) == ["EVENT_TYPE_RENAME"]
    assert watch._ops(watch.IN_ATTRIB) == ["EVENT_TYPE_CHMOD"]
    assert watch._ops(0x8) == []  # IN_CLOSE_WRITE is not an fsnotify op
    assert watch._ops(watch.IN_CREATE | watch.IN_ATTRIB | watch.IN_MODIFY) == [
        "EVENT_TYPE_CREATE",
        "EVENT_TYPE_CHMOD",
        "EVENT_TYPE_WRITE",
    ]


def test_stream_starts_then_reports_create_and_write(ctx, tmp_path):
    stream = watch.watch_dir(ctx, {"path": str(tmp_path)})
    assert next(stream) == {"start": {}}
    (tmp_path / "test.txt").write_text("hello")
    events = collect(stream, has("test.txt", "EVENT_TYPE_WRITE"))
    assert events[0] == {"name": "test.txt", "type": "EVENT_TYPE_CREATE"}
    assert "entry" not in events[0]
    stream.close()
    assert stream.watcher is None
    with pytest.raises(StopIteration):
        next(stream)


def test_stream_close_releases_inotify_fd(ctx, tmp_path):
    stream = watch.watch_dir(ctx, {"path": str(tmp_path)})
    watcher = stream.watcher
    fd = watcher.fileno()
    os.fstat(fd)
    next(stream)
    stream.close()
    assert watcher.ino.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_stream_keepalive_when_idle(ctx, tmp_path):
    stream = watch.watch_dir(ctx, {"path": str(tmp_path)})
    assert next(stream) == {"start": {}}
    started = time.monotonic()
    assert next(stream) == {"keepalive": {}}
    # Sent only after a silence of the interval (1 s here), never sooner.
    assert time.monotonic() - started >= 0.8
    stream.close()


def test_stream_deadline(tmp_path):
    user = User("root", 0, 0, str(tmp_path), "/bin/sh", (0,))
    ctx = Context(EnvdState(), user, {}, 300)
    stream = watch.watch_dir(ctx, {"path": str(tmp_path)})
    next(stream)
    with pytest.raises(RpcError) as err:
        next(stream)
    assert err.value.code == "deadline_exceeded"
    assert stream.watcher is None


def test_include_entry(ctx, tmp_path):
    stream = watch.watch_dir(ctx, {"path": str(tmp_path), "includeEntry": True})
    next(stream)
    (tmp_path / "f.txt").write_text("abc")
    events = collect(stream, has("f.txt", "EVENT_TYPE_WRITE"))
    create = events[0]
    assert create["type"] == "EVENT_TYPE_CREATE"
    assert create["entry"]["path"] == str(tmp_path / "f.txt")
    assert create["entry"]["type"] == "FILE_TYPE_FILE"
    os.unlink(tmp_path / "f.txt")
    events = collect(stream, has("f.txt", "EVENT_TYPE_REMOVE"))
    assert "entry" not in events[-1]
    stream.close()


def test_recursive_reports_nested_directories_and_files(ctx, tmp_path):
    stream = watch.watch_dir(ctx, {"path": str(tmp_path), "recursive": True})
    next(stream)
    os.makedirs(tmp_path / "a" / "b" / "c")
    events = collect(stream, has("a/b/c", "EVENT_TYPE_CREATE"))
    assert events[0] == {"name": "a", "type": "EVENT_TYPE_CREATE"}
    assert has("a/b", "EVENT_TYPE_CREATE")(events)
    (tmp_path / "a" / "b" / "c" / "nested.txt").write_text("x")
    collect(stream, has("a/b/c/nested.txt", "EVENT_TYPE_WRITE"))
    stream.close()


def test_recursive_rename_of_subdirectory_keeps_tracking(ctx, tmp_path):
    (tmp_path / "old").mkdir()
    stream = watch.watch_dir(ctx, {"path": str(tmp_path), "recursive": True})
    next(stream)
    os.rename(tmp_path / "old", tmp_path / "new")
    events = collect(stream, has("new", "EVENT_TYPE_CREATE"))
    assert {"name": "old", "type": "EVENT_TYPE_RENAME"} in events
    (tmp_path / "new" / "f").write_text("x")
    collect(stream, has("new/f", "EVENT_TYPE_WRITE"))
    stream.close()


def test_non_recursive_ignores_nested_changes(ctx, tmp_path):
    (tmp_path / "sub").mkdir()
    stream = watch.watch_dir(ctx, {"path": str(tmp_path)})
    next(stream)
    (tmp_path / "sub" / "inner.txt").write_text("x")
    (tmp_path / "top.txt").write_text("x")
    events = collect(stream, has("top.txt", "EVENT_TYPE_WRITE"))
    assert not any(e["name"].startswith("sub/") for e in events)
    stream.close()


def test_chmod_rename_remove(ctx, tmp_path):
    (tmp_path / "f").write_text("x")
    stream = watch.watch_dir(ctx, {"path": str(tmp_path)})
    next(stream)
    os.chmod(tmp_path / "f", 0o600)
    collect(stream, has("f", "EVENT_TYPE_CHMOD"))
    os.rename(tmp_path / "f", tmp_path / "g")
    events = collect(stream, has("g", "EVENT_TYPE_CREATE"))
    assert {"name": "f", "type": "EVENT_TYPE_RENAME"} in events
    os.unlink(tmp_path / "g")
    collect(stream, has("g", "EVENT_TYPE_REMOVE"))
    stream.close()


def test_watch_errors(ctx, tmp_path):
    with pytest.raises(RpcError) as err:
        watch.watch_dir(ctx, {"path": str(tmp_path / "missing")})
    assert err.value.code == "not_found"
    assert err.value.message.startswith(f"path {tmp_path}/missing not found")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RpcError) as err:
        watch.watch_dir(ctx, {"path": "file"})  # relative: resolved in the home
    assert err.value.code == "invalid_argument"
    assert err.value.message == f"path {tmp_path}/file not a directory"
    with pytest.raises(RpcError) as err:
        watch.create_watcher(ctx, {"path": str(tmp_path / "missing")})
    assert err.value.code == "not_found"


def test_network_mount_detection_reads_mountinfo(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "30 22 0:40 / /mnt/nfs rw - nfs4 server:/export rw\n"
        "31 22 0:41 / /mnt/with\\040space rw - fuse.sshfs host: rw\n"
        "32 30 8:2 / /mnt/nfs/local rw - ext4 /dev/sdb1 rw\n"
    )
    assert watch._is_network_mount("/home/user", str(table)) is False
    assert watch._is_network_mount("/mnt/nfs", str(table)) is True
    assert watch._is_network_mount("/mnt/nfs/data/x", str(table)) is True
    assert watch._is_network_mount("/mnt/nfs/local/x", str(table)) is False
    assert watch._is_network_mount("/mnt/with space/x", str(table)) is True
    assert watch._is_network_mount("/mnt/nfsother", str(table)) is False


def test_network_mount_refused_unless_allowed(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr(watch, "_is_network_mount", lambda path: True)
    with pytest.raises(RpcError) as err:
        watch.watch_dir(ctx, {"path": str(tmp_path)})
    assert (err.value.code, err.value.message) == (
        "invalid_argument",
        f"cannot watch path on network filesystem: {tmp_path}",
    )
    stream = watch.watch_dir(ctx, {"path": str(tmp_path), "allowNetworkMounts": True})
    assert next(stream) == {"start": {}}
    stream.close()


def poll_until(ctx, watcher_id, until, timeout=30.0) -> list[dict]:
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += watch.get_watcher_events(ctx, {"watcherId": watcher_id})["events"]
        if until(events):
            return events
        time.sleep(0.02)
    raise AssertionError(f"condition not met; got {events}")


def test_polled_watcher(ctx, tmp_path):
    watcher_id = watch.create_watcher(ctx, {"path": str(tmp_path), "recursive": True})["watcherId"]
    assert watcher_id.startswith("w")
    (tmp_path / "one.txt").write_text("1")
    events = poll_until(ctx, watcher_id, has("one.txt", "EVENT_TYPE_WRITE"))
    assert events[0] == {"name": "one.txt", "type": "EVENT_TYPE_CREATE"}
    # taken events are cleared
    time.sleep(0.1)
    assert watch.get_watcher_events(ctx, {"watcherId": watcher_id}) == {"events": []}
    os.mkdir(tmp_path / "d")
    (tmp_path / "d" / "two.txt").write_text("2")
    # A file written in a new directory before its watch exists is found by the scan
    # of that directory and reported as CREATE (inotify, like fsnotify, cannot see the
    # write itself); written later, it is a WRITE. Either way it is reported.
    written, found = has("d/two.txt", "EVENT_TYPE_WRITE"), has("d/two.txt", "EVENT_TYPE_CREATE")
    poll_until(ctx, watcher_id, lambda events: written(events) or found(events))

    polled = watch._watchers[watcher_id]
    assert watch.remove_watcher(ctx, {"watcherId": watcher_id}) == {}
    # Removal stops the watcher's thread before it returns (woken through its pipe).
    assert not polled.thread.is_alive()
    assert polled.watcher.ino.closed
    with pytest.raises(RpcError) as err:
        watch.get_watcher_events(ctx, {"watcherId": watcher_id})
    assert (err.value.code, err.value.message) == (
        "not_found",
        f"watcher with id {watcher_id} not found",
    )


def test_unknown_watcher(ctx):
    for fn in (watch.get_watcher_events, watch.remove_watcher):
        with pytest.raises(RpcError) as err:
            fn(ctx, {"watcherId": "wnope"})
        assert err.value.code == "not_found"


def test_polled_watcher_include_entry(ctx, tmp_path):
    watcher_id = watch.create_watcher(ctx, {"path": str(tmp_path), "includeEntry": True})[
        "watcherId"
    ]
    (tmp_path / "e.txt").write_text("1")
    events = poll_until(ctx, watcher_id, has("e.txt", "EVENT_TYPE_CREATE"))
    assert events[0]["entry"]["name"] == "e.txt"
