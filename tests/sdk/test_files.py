"""`files` of the real Python SDK (sync and async) against envd (spec §3.2, §3.3, §3.6)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    FileNotFoundException,
    FilesystemEventType,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    SandboxException,
)

from .conftest import HOME, USER, SecuredEnvd, secured_sandbox

pytestmark = pytest.mark.root

MiB = 1 << 20


# --- write and read ----------------------------------------------------------------------


def test_write_read_text(sandbox: Sandbox, workdir: str):
    path = f"{workdir}/hello.txt"
    info = sandbox.files.write(path, "Hello, World! \u20ac\n")
    assert (info.name, info.type, info.path) == ("hello.txt", FileType.FILE, path)
    assert sandbox.files.read(path) == "Hello, World! \u20ac\n"


def test_write_read_bytes(sandbox: Sandbox, workdir: str):
    data = bytes(range(256)) * 64
    sandbox.files.write(f"{workdir}/b.bin", data)
    got = sandbox.files.read(f"{workdir}/b.bin", format="bytes")
    assert isinstance(got, bytearray | bytes)
    assert bytes(got) == data


def test_write_empty_file(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/empty", "")
    assert sandbox.files.read(f"{workdir}/empty") == ""
    assert sandbox.files.get_info(f"{workdir}/empty").size == 0


def test_write_overwrites(sandbox: Sandbox, workdir: str):
    path = f"{workdir}/o.txt"
    sandbox.files.write(path, "a much longer first version")
    sandbox.files.write(path, "short")
    assert sandbox.files.read(path) == "short"


def test_write_creates_parents_owned_by_user(sandbox: Sandbox, workdir: str):
    path = f"{workdir}/a/b/c/deep.txt"
    sandbox.files.write(path, "deep")
    assert sandbox.files.read(path) == "deep"
    for d in ("a", "a/b", "a/b/c"):
        info = sandbox.files.get_info(f"{workdir}/{d}")
        assert (info.type, info.owner, info.group) == (FileType.DIR, USER, USER)


def test_written_file_visible_to_commands(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/cmd.txt", "from files\n")
    assert sandbox.commands.run(f"cat {workdir}/cmd.txt").stdout == "from files\n"


def test_write_stream_file_object(sandbox: Sandbox, workdir: str):
    data = os.urandom(3 * MiB + 17)
    sandbox.files.write(f"{workdir}/io.bin", io.BytesIO(data))
    assert bytes(sandbox.files.read(f"{workdir}/io.bin", format="bytes")) == data


def test_write_iterable_and_read_stream(sandbox: Sandbox, workdir: str):
    chunks = [os.urandom(100_000) for _ in range(10)]
    sandbox.files.write(f"{workdir}/it.bin", iter(chunks))
    stream = sandbox.files.read(f"{workdir}/it.bin", format="stream")
    got = b"".join(stream)
    assert got == b"".join(chunks)


def test_write_octet_stream_explicit(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/oct.txt", "octet", use_octet_stream=True)
    assert sandbox.files.read(f"{workdir}/oct.txt") == "octet"


def test_write_as_root(sandbox: Sandbox):
    path = "/root/owned-by-root.txt"
    sandbox.files.write(path, "r", user="root")
    info = sandbox.files.get_info(path, user="root")
    assert (info.owner, info.group) == ("root", "root")
    assert sandbox.files.read(path, user="root") == "r"
    sandbox.files.remove(path, user="root")


def test_write_onto_directory_is_invalid(sandbox: Sandbox, workdir: str):
    with pytest.raises(InvalidArgumentException):
        sandbox.files.write(workdir, "x")


def test_100mb_roundtrip(sandbox: Sandbox, workdir: str):
    path = f"{workdir}/big.bin"
    sent = hashlib.sha256()

    def chunks():
        for i in range(100):
            block = hashlib.sha256(str(i).encode()).digest() * (MiB // 32)
            sent.update(block)
            yield block

    info = sandbox.files.write(path, chunks())
    assert info.path == path
    assert sandbox.files.get_info(path).size == 100 * MiB
    received = hashlib.sha256()
    size = 0
    for chunk in sandbox.files.read(path, format="stream"):
        received.update(chunk)
        size += len(chunk)
    assert size == 100 * MiB
    assert received.hexdigest() == sent.hexdigest()
    inside = sandbox.commands.run(f"sha256sum {path}").stdout.split()[0]
    assert inside == sent.hexdigest()


def test_100mb_roundtrip_bytes_multipart(sandbox: Sandbox, workdir: str):
    data = os.urandom(100 * MiB)
    path = f"{workdir}/big-multipart.bin"
    sandbox.files.write(path, data, use_octet_stream=False)
    got = sandbox.files.read(path, format="bytes")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


def test_write_files_several(sandbox: Sandbox, workdir: str):
    entries = [
        {"path": f"{workdir}/m1.txt", "data": "one"},
        {"path": f"{workdir}/sub/m2.txt", "data": b"two"},
        {"path": f"{workdir}/m3.txt", "data": io.BytesIO(b"three")},
    ]
    infos = sandbox.files.write_files(entries)
    assert [i.path for i in infos] == [e["path"] for e in entries]
    assert sandbox.files.read(f"{workdir}/m1.txt") == "one"
    assert sandbox.files.read(f"{workdir}/sub/m2.txt") == "two"
    assert sandbox.files.read(f"{workdir}/m3.txt") == "three"


def test_write_files_multipart_in_one_request(sandbox: Sandbox, workdir: str):
    entries = [{"path": f"{workdir}/p{i}.txt", "data": f"v{i}"} for i in range(5)]
    infos = sandbox.files.write_files(entries, use_octet_stream=False)
    assert sorted(i.name for i in infos) == [f"p{i}.txt" for i in range(5)]
    for i in range(5):
        assert sandbox.files.read(f"{workdir}/p{i}.txt") == f"v{i}"


def test_relative_path_resolves_under_home(sandbox: Sandbox, name: str):
    rel = f"{name}/relative/test.txt"
    info = sandbox.files.write(rel, "rel")
    assert info.path == f"{HOME}/{rel}"
    assert sandbox.files.read(f"{HOME}/{rel}") == "rel"
    assert sandbox.files.get_info(rel).path == f"{HOME}/{rel}"
    sandbox.files.remove(name)


def test_tilde_path(sandbox: Sandbox, name: str):
    info = sandbox.files.write(f"~/{name}.txt", "tilde")
    assert info.path == f"{HOME}/{name}.txt"
    sandbox.files.remove(f"~/{name}.txt")


async def test_async_write_read(async_sandbox: AsyncSandbox, name: str):
    path = f"{HOME}/{name}.txt"
    await async_sandbox.files.write(path, "async text")
    assert await async_sandbox.files.read(path) == "async text"
    data = os.urandom(2 * MiB)
    await async_sandbox.files.write(path, data)
    assert bytes(await async_sandbox.files.read(path, format="bytes")) == data
    stream = await async_sandbox.files.read(path, format="stream")
    got = b"".join([c async for c in stream])
    assert got == data
    await async_sandbox.files.remove(path)


async def test_async_write_async_iterable(async_sandbox: AsyncSandbox, name: str):
    path = f"{HOME}/{name}.bin"

    async def gen():
        for i in range(8):
            yield bytes([i]) * 65536

    await async_sandbox.files.write(path, gen())
    got = bytes(await async_sandbox.files.read(path, format="bytes"))
    assert got == b"".join(bytes([i]) * 65536 for i in range(8))
    await async_sandbox.files.remove(path)


# --- gzip ----------------------------------------------------------------------------------


def test_gzip_write_and_read(sandbox: Sandbox, workdir: str):
    text = "compress me " * 10000
    sandbox.files.write(f"{workdir}/gz.txt", text, gzip=True)
    assert sandbox.commands.run(f"wc -c < {workdir}/gz.txt").stdout.strip() == str(len(text))
    assert sandbox.files.read(f"{workdir}/gz.txt", gzip=True) == text
    assert sandbox.files.read(f"{workdir}/gz.txt") == text


def test_gzip_binary_stream(sandbox: Sandbox, workdir: str):
    data = os.urandom(MiB)
    sandbox.files.write(f"{workdir}/gz.bin", io.BytesIO(data), gzip=True)
    got = b"".join(sandbox.files.read(f"{workdir}/gz.bin", format="stream", gzip=True))
    assert got == data


def test_gzip_response_is_encoded(sandbox: Sandbox, envd, workdir: str):
    sandbox.files.write(f"{workdir}/enc.txt", "x" * 5000)
    r = httpx.get(
        f"{envd.url}/files",
        params={"path": f"{workdir}/enc.txt"},
        headers={"Accept-Encoding": "gzip"},
    )
    assert r.status_code == 200
    assert r.headers.get("content-encoding") == "gzip"
    assert r.text == "x" * 5000  # httpx decodes it


async def test_async_gzip(async_sandbox: AsyncSandbox, name: str):
    path = f"{HOME}/{name}.txt"
    await async_sandbox.files.write(path, "zip" * 1000, gzip=True)
    assert await async_sandbox.files.read(path, gzip=True) == "zip" * 1000
    await async_sandbox.files.remove(path)


# --- metadata ------------------------------------------------------------------------------


def test_metadata_roundtrip(sandbox: Sandbox, workdir: str):
    path = f"{workdir}/meta.txt"
    metadata = {"author": "mish", "purpose": "upload"}
    info = sandbox.files.write(path, "m", metadata=metadata)
    assert info.metadata == metadata
    assert sandbox.files.get_info(path).metadata == metadata


def test_metadata_keys_lowercased(sandbox: Sandbox, workdir: str):
    path = f"{workdir}/meta-case.txt"
    sandbox.files.write(path, "m", metadata={"Author": "Mish"})
    assert sandbox.files.get_info(path).metadata == {"author": "Mish"}


def test_metadata_octet_stream(sandbox: Sandbox, workdir: str):
    path = f"{workdir}/meta-oct.txt"
    sandbox.files.write(path, "m", metadata={"k": "v"}, use_octet_stream=True)
    assert sandbox.files.get_info(path).metadata == {"k": "v"}


def test_metadata_absent_and_cleared_on_overwrite(sandbox: Sandbox, workdir: str):
    path = f"{workdir}/meta-clear.txt"
    info = sandbox.files.write(path, "plain")
    assert info.metadata is None
    assert sandbox.files.get_info(path).metadata is None
    sandbox.files.write(path, "first", metadata={"author": "mish"})
    info = sandbox.files.write(path, "second")
    assert info.metadata is None
    assert sandbox.files.get_info(path).metadata is None


def test_metadata_write_files_list_and_rename(sandbox: Sandbox, workdir: str):
    infos = sandbox.files.write_files(
        [{"path": f"{workdir}/w1", "data": "1"}, {"path": f"{workdir}/w2", "data": "2"}],
        metadata={"source": "suite"},
    )
    assert [i.metadata for i in infos] == [{"source": "suite"}] * 2
    listed = {e.name: e.metadata for e in sandbox.files.list(workdir)}
    assert listed == {"w1": {"source": "suite"}, "w2": {"source": "suite"}}
    moved = sandbox.files.rename(f"{workdir}/w1", f"{workdir}/w1-moved")
    assert moved.metadata == {"source": "suite"}


def test_metadata_from_xattr_set_inside(sandbox: Sandbox, envd, workdir: str):
    if envd.busybox:
        pytest.skip("busybox root has no python3 to call setxattr")
    path = f"{workdir}/x.txt"
    sandbox.files.write(path, "x")
    sandbox.commands.run(
        f"python3 -c \"import os; os.setxattr('{path}', 'user.e2b.author', b'mish')\""
    )
    assert sandbox.files.get_info(path).metadata == {"author": "mish"}


# --- list, info, exists ----------------------------------------------------------------------


def _tree(sandbox: Sandbox, root: str) -> None:
    for d in ("subdir1/subdir1_2", "subdir1/subdir1_1", "subdir2/subdir2_1"):
        sandbox.files.make_dir(f"{root}/{d}")
    sandbox.files.write(f"{root}/file1.txt", "Hello, world!")
    sandbox.files.write(f"{root}/subdir2/file2.txt", "two")
    sandbox.files.write(f"{root}/subdir2/subdir2_1/deep.txt", "deep")


def test_list_depth_lexical_preorder(sandbox: Sandbox, workdir: str):
    _tree(sandbox, workdir)
    depth1 = sandbox.files.list(workdir)
    assert [(e.name, e.type) for e in depth1] == [
        ("file1.txt", FileType.FILE),
        ("subdir1", FileType.DIR),
        ("subdir2", FileType.DIR),
    ]
    assert [e.path for e in depth1] == [
        f"{workdir}/{n}" for n in ("file1.txt", "subdir1", "subdir2")
    ]
    assert [e.path for e in sandbox.files.list(workdir, depth=1)] == [e.path for e in depth1]
    rel2 = [e.path[len(workdir) + 1 :] for e in sandbox.files.list(workdir, depth=2)]
    assert rel2 == [
        "file1.txt",
        "subdir1",
        "subdir1/subdir1_1",
        "subdir1/subdir1_2",
        "subdir2",
        "subdir2/file2.txt",
        "subdir2/subdir2_1",
    ]
    rel3 = [e.path[len(workdir) + 1 :] for e in sandbox.files.list(workdir, depth=3)]
    assert rel3 == [*rel2, "subdir2/subdir2_1/deep.txt"]
    rel9 = [e.path[len(workdir) + 1 :] for e in sandbox.files.list(workdir, depth=9)]
    assert rel9 == rel3
    names = [e.name for e in sandbox.files.list(workdir, depth=3)]
    assert names[-1] == "deep.txt"


def test_list_depth_below_one_rejected(sandbox: Sandbox, workdir: str):
    with pytest.raises(Exception, match="depth should be at least 1"):
        sandbox.files.list(workdir, depth=-1)


def test_list_entry_details(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/test.txt", "Hello, World!")
    sandbox.files.make_dir(f"{workdir}/subdir")
    entries = {e.name: e for e in sandbox.files.list(workdir)}
    f, d = entries["test.txt"], entries["subdir"]
    assert (f.type, f.mode, f.permissions, f.owner, f.group, f.size) == (
        FileType.FILE,
        0o644,
        "-rw-r--r--",
        USER,
        USER,
        13,
    )
    assert f.symlink_target is None
    assert (d.type, d.mode, d.permissions, d.owner, d.group) == (
        FileType.DIR,
        0o755,
        "drwxr-xr-x",
        USER,
        USER,
    )


def test_list_missing_and_not_a_directory(sandbox: Sandbox, workdir: str):
    with pytest.raises(NotFoundException):
        sandbox.files.list(f"{workdir}/nope")
    sandbox.files.write(f"{workdir}/f", "x")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.list(f"{workdir}/f")


def test_list_follows_symlinked_directory(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/real/inner.txt", "i")
    sandbox.commands.run(f"ln -s {workdir}/real {workdir}/link")
    entries = sandbox.files.list(f"{workdir}/link")
    assert [e.name for e in entries] == ["inner.txt"]
    assert entries[0].path == f"{workdir}/link/inner.txt"


def test_get_info_file(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/info.txt", "Hello, World!")
    info = sandbox.files.get_info(f"{workdir}/info.txt")
    assert info.name == "info.txt"
    assert info.type == FileType.FILE
    assert info.path == f"{workdir}/info.txt"
    assert info.size == 13
    assert info.mode == 0o644
    assert info.permissions == "-rw-r--r--"
    assert (info.owner, info.group) == (USER, USER)
    assert info.modified_time is not None and info.modified_time.year >= 2024
    assert info.symlink_target is None
    assert info.metadata is None


def test_get_info_directory(sandbox: Sandbox, workdir: str):
    sandbox.files.make_dir(f"{workdir}/d")
    info = sandbox.files.get_info(f"{workdir}/d")
    assert (info.name, info.type, info.path) == ("d", FileType.DIR, f"{workdir}/d")
    assert (info.mode, info.permissions, info.owner, info.group) == (
        0o755,
        "drwxr-xr-x",
        USER,
        USER,
    )


def test_home_dotfiles(sandbox: Sandbox):
    for dotfile in (".bashrc", ".profile"):
        info = sandbox.files.get_info(f"~/{dotfile}")
        assert (info.permissions, info.owner, info.group) == ("-rw-r--r--", USER, USER)


def test_get_info_chmod_reflected(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/x.sh", "#!/bin/sh\n")
    sandbox.commands.run(f"chmod 750 {workdir}/x.sh")
    info = sandbox.files.get_info(f"{workdir}/x.sh")
    assert (info.mode, info.permissions) == (0o750, "-rwxr-x---")


def test_get_info_symlink(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/target.txt", "t")
    sandbox.commands.run(f"ln -s {workdir}/target.txt {workdir}/abs-link")
    sandbox.commands.run(f"cd {workdir} && ln -s target.txt rel-link")
    for link in ("abs-link", "rel-link"):
        info = sandbox.files.get_info(f"{workdir}/{link}")
        assert info.name == link
        assert info.path == f"{workdir}/{link}"
        assert info.type == FileType.FILE  # the target's type, no is_symlink (§3.6)
        assert info.symlink_target == f"{workdir}/target.txt"
        assert info.mode == 0o644


def test_list_shows_symlink_as_target_type(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/t.txt", "t")
    sandbox.commands.run(f"ln -s {workdir}/t.txt {workdir}/l")
    entries = {e.name: e for e in sandbox.files.list(workdir)}
    assert entries["l"].type == FileType.FILE
    assert entries["l"].symlink_target == f"{workdir}/t.txt"


def test_get_info_missing(sandbox: Sandbox, workdir: str):
    with pytest.raises(NotFoundException):
        sandbox.files.get_info(f"{workdir}/missing")


def test_exists(sandbox: Sandbox, workdir: str):
    assert sandbox.files.exists(workdir) is True
    assert sandbox.files.exists(f"{workdir}/nope") is False
    sandbox.files.write(f"{workdir}/yes", "y")
    assert sandbox.files.exists(f"{workdir}/yes") is True


async def test_async_list_info_exists(async_sandbox: AsyncSandbox, name: str):
    d = f"{HOME}/{name}"
    assert await async_sandbox.files.make_dir(f"{d}/sub") is True
    await async_sandbox.files.write(f"{d}/a.txt", "abc")
    assert [e.name for e in await async_sandbox.files.list(d)] == ["a.txt", "sub"]
    info = await async_sandbox.files.get_info(f"{d}/a.txt")
    assert (info.size, info.type, info.owner) == (3, FileType.FILE, USER)
    assert await async_sandbox.files.exists(f"{d}/a.txt") is True
    assert await async_sandbox.files.exists(f"{d}/b.txt") is False
    await async_sandbox.files.remove(d)
    assert await async_sandbox.files.exists(d) is False


# --- make_dir, rename, remove ------------------------------------------------------------------


def test_make_dir(sandbox: Sandbox, workdir: str):
    assert sandbox.files.make_dir(f"{workdir}/new") is True
    assert sandbox.files.make_dir(f"{workdir}/new") is False
    assert sandbox.files.make_dir(f"{workdir}/x/y/z") is True
    info = sandbox.files.get_info(f"{workdir}/x/y")
    assert (info.type, info.owner) == (FileType.DIR, USER)


def test_make_dir_over_file_is_invalid(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/file", "f")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir(f"{workdir}/file")


def test_rename(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/old.txt", "content")
    info = sandbox.files.rename(f"{workdir}/old.txt", f"{workdir}/new/dir/new.txt")
    assert (info.name, info.path, info.type) == (
        "new.txt",
        f"{workdir}/new/dir/new.txt",
        FileType.FILE,
    )
    assert not sandbox.files.exists(f"{workdir}/old.txt")
    assert sandbox.files.read(f"{workdir}/new/dir/new.txt") == "content"


def test_rename_directory(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/d1/f.txt", "f")
    sandbox.files.rename(f"{workdir}/d1", f"{workdir}/d2")
    assert sandbox.files.read(f"{workdir}/d2/f.txt") == "f"


def test_rename_missing_source(sandbox: Sandbox, workdir: str):
    with pytest.raises(NotFoundException):
        sandbox.files.rename(f"{workdir}/none", f"{workdir}/other")


def test_remove(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/r/a/b.txt", "b")
    sandbox.files.remove(f"{workdir}/r")
    assert not sandbox.files.exists(f"{workdir}/r")
    sandbox.files.remove(f"{workdir}/r")  # a missing path is not an error
    sandbox.files.remove(f"{workdir}/never-existed")


async def test_async_make_dir_rename_remove(async_sandbox: AsyncSandbox, name: str):
    d = f"{HOME}/{name}"
    assert await async_sandbox.files.make_dir(d) is True
    assert await async_sandbox.files.make_dir(d) is False
    await async_sandbox.files.write(f"{d}/a", "a")
    moved = await async_sandbox.files.rename(f"{d}/a", f"{d}/b")
    assert moved.path == f"{d}/b"
    await async_sandbox.files.remove(d)
    await async_sandbox.files.remove(d)


# --- errors --------------------------------------------------------------------------------


def test_read_missing_raises_file_not_found(sandbox: Sandbox, workdir: str):
    with pytest.raises(FileNotFoundException):
        sandbox.files.read(f"{workdir}/missing.txt")
    with pytest.raises(FileNotFoundException):
        sandbox.files.read(f"{workdir}/missing.txt", format="bytes")


def test_read_stream_missing_raises(sandbox: Sandbox, workdir: str):
    with pytest.raises(NotFoundException):
        b"".join(sandbox.files.read(f"{workdir}/missing.txt", format="stream"))


def test_read_directory_is_invalid(sandbox: Sandbox, workdir: str):
    with pytest.raises(InvalidArgumentException):
        sandbox.files.read(workdir)


async def test_async_read_missing(async_sandbox: AsyncSandbox, name: str):
    with pytest.raises(FileNotFoundException):
        await async_sandbox.files.read(f"{HOME}/{name}-missing")


def test_raw_files_errors(sandbox: Sandbox, envd, workdir: str):
    """The `/files` error bodies and statuses of §3.3, as JSON `{code, message}`."""
    missing = httpx.get(f"{envd.url}/files", params={"path": f"{workdir}/nope"})
    assert missing.status_code == 404
    assert missing.json() == {"code": 404, "message": f"path '{workdir}/nope' does not exist"}
    is_dir = httpx.get(f"{envd.url}/files", params={"path": workdir})
    assert is_dir.status_code == 400
    assert is_dir.json()["code"] == 400
    no_path = httpx.post(
        f"{envd.url}/files",
        content=b"x",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert no_path.status_code == 400
    bad_user = httpx.get(
        f"{envd.url}/files", params={"path": "/etc/hostname", "username": "nobody-xyz"}
    )
    assert bad_user.status_code == 401


def test_raw_multipart_duplicate_destination(envd, workdir: str):
    files = [
        ("file", (f"{workdir}/dup.txt", b"a")),
        ("file", (f"{workdir}/dup.txt", b"b")),
    ]
    r = httpx.post(f"{envd.url}/files", files=files)
    assert r.status_code == 400


def test_unknown_user_is_unauthenticated(sandbox: Sandbox):
    with pytest.raises(AuthenticationException):
        sandbox.files.read("/etc/hostname", user="no-such-user-xyz")
    with pytest.raises(AuthenticationException):
        sandbox.files.write("/tmp/x", "x", user="no-such-user-xyz")
    with pytest.raises(AuthenticationException):
        sandbox.files.list("/", user="no-such-user-xyz")


def test_raw_metrics_and_envs(envd):
    metrics = httpx.get(f"{envd.url}/metrics")
    assert metrics.status_code == 200
    assert set(metrics.json()) >= {
        "ts",
        "cpu_count",
        "cpu_used_pct",
        "mem_total",
        "mem_used",
        "mem_total_mib",
        "mem_used_mib",
        "disk_used",
        "disk_total",
    }
    envs = httpx.get(f"{envd.url}/envs")
    assert envs.status_code == 200
    assert isinstance(envs.json(), dict)
    assert "no-store" in envs.headers.get("cache-control", "")


def test_raw_health_and_unknown_route(envd):
    assert httpx.get(f"{envd.url}/health").status_code == 204
    assert httpx.get(f"{envd.url}/no-such-route").status_code == 404


def test_concurrent_uploads(sandbox: Sandbox, envd, workdir: str):
    import concurrent.futures

    def upload(i: int) -> int:
        r = httpx.post(
            f"{envd.url}/files",
            params={"path": f"{workdir}/c{i}.bin"},
            content=bytes([i]) * 200_000,
            headers={"Content-Type": "application/octet-stream"},
        )
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(upload, range(16))) == [200] * 16
    for i in range(16):
        assert sandbox.files.get_info(f"{workdir}/c{i}.bin").size == 200_000


# --- watch ----------------------------------------------------------------------------------


def _poll(handle, done, rounds: int = 100) -> list:
    """Events from a sync watcher until `done(events)`; bounded, no timing asserted."""
    events: list = []
    for _ in range(rounds):
        events += handle.get_new_events()
        if done(events):
            break
        time.sleep(0.05)
    return events


def _has(events, kind, name) -> bool:
    return any(e.type == kind and e.name == name for e in events)


def test_watch_dir_sync(sandbox: Sandbox, workdir: str):
    handle = sandbox.files.watch_dir(workdir)
    sandbox.files.write(f"{workdir}/w.txt", "watched")
    events = _poll(handle, lambda ev: _has(ev, FilesystemEventType.WRITE, "w.txt"))
    names = [(e.type, e.name) for e in events]
    assert _has(events, FilesystemEventType.WRITE, "w.txt"), names
    first = next(e for e in events if e.name == "w.txt")
    assert first.type == FilesystemEventType.CREATE, names
    # get_new_events returns and clears the buffer
    sandbox.files.remove(f"{workdir}/w.txt")
    events = _poll(handle, lambda ev: _has(ev, FilesystemEventType.REMOVE, "w.txt"))
    assert not _has(events, FilesystemEventType.CREATE, "w.txt")
    assert _has(events, FilesystemEventType.REMOVE, "w.txt")
    handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()


def test_watch_upload_event_sequence(sandbox: Sandbox, workdir: str):
    # The SDK's own test_watch_directory_changes: one small upload of a new file is
    # CREATE, CHMOD (the chown to the user), WRITE, as Go envd's open/chown/write gives.
    handle = sandbox.files.watch_dir(workdir)
    sandbox.files.write(f"{workdir}/seq.txt", "This file will be watched.")
    events = _poll(handle, lambda ev: _has(ev, FilesystemEventType.WRITE, "seq.txt"))
    time.sleep(0.2)  # let any trailing event arrive before comparing the whole list
    events += handle.get_new_events()
    assert [(e.type, e.name) for e in events] == [
        (FilesystemEventType.CREATE, "seq.txt"),
        (FilesystemEventType.CHMOD, "seq.txt"),
        (FilesystemEventType.WRITE, "seq.txt"),
    ]
    handle.stop()


def test_watch_dir_sync_rename_and_chmod(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/a.txt", "a")
    handle = sandbox.files.watch_dir(workdir)
    sandbox.files.rename(f"{workdir}/a.txt", f"{workdir}/b.txt")
    sandbox.commands.run(f"chmod 600 {workdir}/b.txt")
    events = _poll(handle, lambda ev: _has(ev, FilesystemEventType.CHMOD, "b.txt"))
    assert _has(events, FilesystemEventType.RENAME, "a.txt"), events
    assert _has(events, FilesystemEventType.CREATE, "b.txt"), events
    assert _has(events, FilesystemEventType.CHMOD, "b.txt"), events
    handle.stop()


def test_watch_dir_include_entry(sandbox: Sandbox, workdir: str):
    handle = sandbox.files.watch_dir(workdir, include_entry=True)
    sandbox.files.write(f"{workdir}/e.txt", "entry")
    events = _poll(handle, lambda ev: _has(ev, FilesystemEventType.WRITE, "e.txt"))
    writes = [e for e in events if e.type == FilesystemEventType.WRITE and e.name == "e.txt"]
    assert writes and writes[-1].entry is not None
    assert writes[-1].entry.path == f"{workdir}/e.txt"
    assert writes[-1].entry.type == FileType.FILE
    handle.stop()


def test_watch_recursive_sees_nested_create(sandbox: Sandbox, workdir: str):
    sandbox.files.make_dir(f"{workdir}/nested")
    handle = sandbox.files.watch_dir(workdir, recursive=True)
    sandbox.files.write(f"{workdir}/nested/file.txt", "n")
    events = _poll(handle, lambda ev: _has(ev, FilesystemEventType.WRITE, "nested/file.txt"))
    first = next((e for e in events if e.name == "nested/file.txt"), None)
    assert first is not None and first.type == FilesystemEventType.CREATE, events
    handle.stop()


def test_watch_recursive_after_nested_dir_added(sandbox: Sandbox, workdir: str):
    handle = sandbox.files.watch_dir(workdir, recursive=True)
    sandbox.files.make_dir(f"{workdir}/later")
    sandbox.files.write(f"{workdir}/later/f.txt", "x")
    events = _poll(handle, lambda ev: _has(ev, FilesystemEventType.WRITE, "later/f.txt"))
    assert _has(events, FilesystemEventType.CREATE, "later"), events
    assert _has(events, FilesystemEventType.WRITE, "later/f.txt"), events
    handle.stop()


def test_watch_non_recursive_ignores_nested(sandbox: Sandbox, workdir: str):
    sandbox.files.make_dir(f"{workdir}/sub")
    handle = sandbox.files.watch_dir(workdir)
    sandbox.files.write(f"{workdir}/sub/hidden.txt", "h")
    sandbox.files.write(f"{workdir}/top.txt", "t")
    events = _poll(handle, lambda ev: _has(ev, FilesystemEventType.WRITE, "top.txt"))
    assert not any("hidden.txt" in e.name for e in events), events
    handle.stop()


def test_watch_missing_dir_raises_not_found(sandbox: Sandbox, workdir: str):
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir(f"{workdir}/nope")


def test_watch_file_raises(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/f.txt", "f")
    with pytest.raises(SandboxException):
        sandbox.files.watch_dir(f"{workdir}/f.txt")


async def test_watch_dir_async_stream(async_sandbox: AsyncSandbox, name: str):
    d = f"{HOME}/{name}"
    await async_sandbox.files.make_dir(f"{d}/nested")
    events: list = []
    got_write = asyncio.Event()

    def on_event(event) -> None:
        events.append(event)
        if event.type == FilesystemEventType.WRITE and event.name == "nested/x.txt":
            got_write.set()

    handle = await async_sandbox.files.watch_dir(d, on_event, recursive=True, timeout=30)
    await async_sandbox.files.write(f"{d}/nested/x.txt", "async watched")
    await asyncio.wait_for(got_write.wait(), 30)
    first = next(e for e in events if e.name == "nested/x.txt")
    assert first.type == FilesystemEventType.CREATE
    await handle.stop()
    await async_sandbox.files.remove(d)


async def test_watch_dir_async_missing(async_sandbox: AsyncSandbox, name: str):
    with pytest.raises(NotFoundException):
        await async_sandbox.files.watch_dir(f"{HOME}/{name}-none", lambda e: None)


# --- secured envd: access token and signed URLs (§3.2) --------------------------------------


def test_secured_with_token_works(secured_envd: SecuredEnvd, name: str):
    sbx = secured_sandbox(secured_envd.url, secured_envd.token)
    assert sbx.commands.run("echo secured").stdout == "secured\n"
    sbx.files.write(f"{name}.txt", "tok")
    assert sbx.files.read(f"{name}.txt") == "tok"
    assert [e.name for e in sbx.files.list(".") if e.name == f"{name}.txt"] == [f"{name}.txt"]


def test_secured_without_token_is_rejected(secured_envd: SecuredEnvd):
    sbx = Sandbox.create(sandbox_url=secured_envd.url, debug=True)
    assert sbx.is_running() is True  # /health needs no token
    with pytest.raises(AuthenticationException):
        sbx.commands.run("echo nope")
    with pytest.raises(AuthenticationException):
        sbx.files.list("/")
    with pytest.raises(AuthenticationException):
        sbx.files.read("/etc/hostname")
    with pytest.raises(AuthenticationException):
        sbx.files.write("/tmp/unauth.txt", "x")


def test_secured_wrong_token_is_rejected(secured_envd: SecuredEnvd):
    sbx = secured_sandbox(secured_envd.url, "wrong-" + secured_envd.token)
    with pytest.raises(AuthenticationException):
        sbx.commands.run("echo nope")
    with pytest.raises(AuthenticationException):
        sbx.files.exists("/tmp")
    with pytest.raises(AuthenticationException):
        sbx.files.read("/etc/hostname")


async def test_secured_async_wrong_token(secured_envd: SecuredEnvd):
    sbx = secured_sandbox(secured_envd.url, "bad", AsyncSandbox)
    with pytest.raises(AuthenticationException):
        await sbx.commands.run("true")
    good = secured_sandbox(secured_envd.url, secured_envd.token, AsyncSandbox)
    assert (await good.commands.run("echo ok")).stdout == "ok\n"


def test_secured_raw_401_body(secured_envd: SecuredEnvd):
    r = httpx.post(
        f"{secured_envd.url}/process.Process/List",
        json={},
        headers={"Connect-Protocol-Version": "1"},
    )
    assert r.status_code == 401
    r = httpx.get(f"{secured_envd.url}/files", params={"path": "/etc/hostname"})
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "missing signature query parameter"}
    r = httpx.get(f"{secured_envd.url}/envs")
    assert r.status_code == 401
    r = httpx.get(f"{secured_envd.url}/envs", headers={"X-Access-Token": secured_envd.token})
    assert r.status_code == 200 and isinstance(r.json(), dict)


def test_signed_download_url(secured_envd: SecuredEnvd, name: str):
    sbx = secured_sandbox(secured_envd.url, secured_envd.token)
    sbx.files.write(f"{name}.txt", "signed content")
    for url in (
        sbx.download_url(f"{name}.txt", USER),
        sbx.download_url(f"{name}.txt", USER, use_signature_expiration=120),
        sbx.download_url(f"{name}.txt"),
    ):
        assert "signature=v1_" in url
        r = httpx.get(url)
        assert (r.status_code, r.text) == (200, "signed content"), url


def test_signed_download_url_errors(secured_envd: SecuredEnvd, name: str):
    sbx = secured_sandbox(secured_envd.url, secured_envd.token)
    sbx.files.write(f"{name}.txt", "x")
    expired = httpx.get(sbx.download_url(f"{name}.txt", USER, use_signature_expiration=-120))
    assert expired.status_code == 401
    assert expired.json() == {"code": 401, "message": "signature is already expired"}
    good = sbx.download_url(f"{name}.txt", USER, use_signature_expiration=120)
    tampered = good.replace("signature=v1_", "signature=v1_A")
    r = httpx.get(tampered)
    assert r.status_code == 401
    assert r.json()["message"] == "invalid signature"
    # the signature covers the expiration
    exp = int(httpx.URL(good).params["signature_expiration"])
    r = httpx.get(good.replace(f"signature_expiration={exp}", f"signature_expiration={exp + 1}"))
    assert r.status_code == 401
    # a valid signature on a missing file gives 404
    r = httpx.get(sbx.download_url(f"{name}-missing.txt", USER))
    assert r.status_code == 404
    # a signature for reading does not allow writing
    r = httpx.post(sbx.download_url(f"{name}.txt", USER), files={"file": ("f", b"no")})
    assert r.status_code == 401


def test_signed_upload_url(secured_envd: SecuredEnvd, name: str):
    sbx = secured_sandbox(secured_envd.url, secured_envd.token)
    path = f"{HOME}/{name}-up.txt"
    url = sbx.upload_url(path, USER)
    r = httpx.post(url, files={"file": ("ignored-name", b"uploaded")})
    assert r.status_code == 200, r.text
    assert r.json()[0]["path"] == path
    assert sbx.files.read(path) == "uploaded"
    info = sbx.files.get_info(path)
    assert (info.owner, info.group) == (USER, USER)


def test_unsigned_download_url_on_open_envd(sandbox: Sandbox, workdir: str):
    sandbox.files.write(f"{workdir}/open.txt", "open")
    url = sandbox.download_url(f"{workdir}/open.txt")
    assert "signature" not in url
    r = httpx.get(url)
    assert (r.status_code, r.text) == (200, "open")
    up = sandbox.upload_url(f"{workdir}/open-up.txt")
    assert httpx.post(up, files={"file": ("x", b"up")}).status_code == 200
    assert sandbox.files.read(f"{workdir}/open-up.txt") == "up"
