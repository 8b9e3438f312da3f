"""The filesystem.Filesystem unary RPCs (hearth.envd.filesystem)."""

from __future__ import annotations

import os

import pytest

from hearth.envd import filesystem
from hearth.envd.context import Context
from hearth.envd.errors import RpcError
from hearth.envd.state import EnvdState

UID, GID = 4321, 4322  # the ids of the conftest account


@pytest.fixture
def ctx(envd_user):
    return Context(EnvdState(), envd_user, {}, None)


def rpc_error(fn, *args) -> RpcError:
    with pytest.raises(RpcError) as err:
        fn(*args)
    return err.value


def test_methods_table():
    assert set(filesystem.METHODS) == {
        "Stat",
        "MakeDir",
        "Move",
        "ListDir",
        "Remove",
        "WatchDir",
        "CreateWatcher",
        "GetWatcherEvents",
        "RemoveWatcher",
    }
    assert filesystem.METHODS["WatchDir"].kind == "server_stream"
    assert filesystem.METHODS["Stat"].kind == "unary"
    assert filesystem.METHODS["ListDir"].request_type == "filesystem.ListDirRequest"
    assert filesystem.METHODS["GetWatcherEvents"].response_type == (
        "filesystem.GetWatcherEventsResponse"
    )


def test_stat_relative_path_resolves_in_home(ctx, home):
    (home / "relative").mkdir()
    (home / "relative" / "test.txt").write_text("Hello, World!")
    got = filesystem.stat(ctx, {"path": "relative/test.txt"})["entry"]
    assert got["path"] == str(home / "relative" / "test.txt")
    assert got["size"] == 13
    assert filesystem.stat(ctx, {"path": "~/relative/test.txt"})["entry"]["path"] == got["path"]


def test_stat_empty_path_is_default_workdir(ctx, home, tmp_path):
    assert filesystem.stat(ctx, {"path": ""})["entry"]["path"] == str(home)
    ctx.state.default_workdir = str(tmp_path)
    assert filesystem.stat(ctx, {})["entry"]["path"] == str(tmp_path)


def test_stat_missing_is_not_found(ctx, home):
    err = rpc_error(filesystem.stat, ctx, {"path": "/nonexistent/file"})
    assert err.code == "not_found"
    assert err.message.startswith("file not found: ")


def test_other_users_home_is_invalid_argument(ctx):
    err = rpc_error(filesystem.stat, ctx, {"path": "~root/x"})
    assert err.code == "invalid_argument"
    assert "cannot expand user-specific home dir" in err.message


def test_make_dir_creates_parents_owned_by_user(ctx, home):
    got = filesystem.make_dir(ctx, {"path": "a/b/c"})["entry"]
    assert got["path"] == str(home / "a" / "b" / "c")
    assert got["type"] == "FILE_TYPE_DIRECTORY"
    assert got["name"] == "c"
    for sub in ("a", "a/b", "a/b/c"):
        info = os.stat(home / sub)
        assert (info.st_uid, info.st_gid) == (UID, GID)
    assert os.stat(home).st_uid == 0  # existing directories are left alone


def test_make_dir_existing(ctx, home):
    (home / "d").mkdir()
    (home / "f").write_text("x")
    err = rpc_error(filesystem.make_dir, ctx, {"path": "d"})
    assert (err.code, err.message) == ("already_exists", f"directory already exists: {home}/d")
    err = rpc_error(filesystem.make_dir, ctx, {"path": "f"})
    assert err.code == "invalid_argument"
    assert err.message == f"path already exists but it is not a directory: {home}/f"


def test_move_creates_destination_parents(ctx, home):
    (home / "src.txt").write_text("content")
    got = filesystem.move(ctx, {"source": "src.txt", "destination": "x/y/dst.txt"})["entry"]
    assert got["path"] == str(home / "x" / "y" / "dst.txt")
    assert got["type"] == "FILE_TYPE_FILE"
    assert (home / "x" / "y" / "dst.txt").read_text() == "content"
    assert not (home / "src.txt").exists()
    assert os.stat(home / "x").st_uid == UID


def test_move_missing_source(ctx, home):
    err = rpc_error(filesystem.move, ctx, {"source": "nope", "destination": "dst"})
    assert err.code == "not_found"
    assert err.message.startswith(f"source file not found: rename {home}/nope {home}/dst")


def test_move_onto_existing_directory_fails(ctx, home):
    (home / "a").mkdir()
    (home / "b").mkdir()
    err = rpc_error(filesystem.move, ctx, {"source": "a", "destination": "b"})
    assert err.code == "internal"
    assert err.message.endswith("file exists")
    assert (home / "a").is_dir()


def test_move_directory(ctx, home):
    (home / "a").mkdir()
    (home / "a" / "f").write_text("1")
    filesystem.move(ctx, {"source": "a", "destination": "b"})
    assert (home / "b" / "f").read_text() == "1"


def test_remove(ctx, home):
    (home / "f").write_text("x")
    (home / "d" / "e").mkdir(parents=True)
    (home / "d" / "e" / "g").write_text("x")
    (home / "keep").mkdir()
    (home / "keep" / "k").write_text("x")
    (home / "link").symlink_to(home / "keep")
    assert filesystem.remove(ctx, {"path": "f"}) == {}
    assert filesystem.remove(ctx, {"path": "d"}) == {}
    assert filesystem.remove(ctx, {"path": "link"}) == {}
    assert filesystem.remove(ctx, {"path": "missing"}) == {}  # os.RemoveAll semantics
    assert not (home / "f").exists()
    assert not (home / "d").exists()
    assert not (home / "link").is_symlink()
    assert (home / "keep" / "k").exists()  # the link was not followed


@pytest.fixture
def tree(home):
    root = home / "tree"
    for d in ("subdir1/subdir1_1/deep", "subdir1/subdir1_2", "subdir2"):
        (root / d).mkdir(parents=True)
    (root / "file1.txt").write_text("1")
    (root / "subdir1" / "Z.txt").write_text("z")
    (root / "subdir1" / "a.txt").write_text("a")
    (root / "subdir1" / "subdir1_1" / "deep" / "f").write_text("f")
    return root


def rel_paths(entries, root):
    return [e["path"][len(str(root)) + 1 :] for e in entries]


def test_list_dir_depth_one_and_zero(ctx, tree):
    want = ["file1.txt", "subdir1", "subdir2"]
    got = filesystem.list_dir(ctx, {"path": str(tree), "depth": 1})["entries"]
    assert rel_paths(got, tree) == want
    got = filesystem.list_dir(ctx, {"path": str(tree)})["entries"]
    assert rel_paths(got, tree) == want
    assert [e["name"] for e in got] == want
    assert [e["type"] for e in got] == [
        "FILE_TYPE_FILE",
        "FILE_TYPE_DIRECTORY",
        "FILE_TYPE_DIRECTORY",
    ]


def test_list_dir_is_lexical_preorder(ctx, tree):
    got = filesystem.list_dir(ctx, {"path": "tree", "depth": 2})["entries"]
    assert rel_paths(got, tree) == [
        "file1.txt",
        "subdir1",
        "subdir1/Z.txt",
        "subdir1/a.txt",
        "subdir1/subdir1_1",
        "subdir1/subdir1_2",
        "subdir2",
    ]
    deep = filesystem.list_dir(ctx, {"path": "tree", "depth": 3})["entries"]
    assert "subdir1/subdir1_1/deep" in rel_paths(deep, tree)
    assert "subdir1/subdir1_1/deep/f" not in rel_paths(deep, tree)
    beyond = filesystem.list_dir(ctx, {"path": "tree", "depth": 10})["entries"]
    assert rel_paths(beyond, tree)[-4:] == [
        "subdir1/subdir1_1/deep",
        "subdir1/subdir1_1/deep/f",
        "subdir1/subdir1_2",
        "subdir2",
    ]
    assert beyond == filesystem.list_dir(ctx, {"path": "tree", "depth": 50})["entries"]


def test_list_dir_follows_symlinked_root_and_keeps_requested_path(ctx, home, tree):
    (home / "alias").symlink_to(tree)
    got = filesystem.list_dir(ctx, {"path": "alias", "depth": 1})["entries"]
    assert [e["path"] for e in got] == [
        str(home / "alias" / n) for n in ("file1.txt", "subdir1", "subdir2")
    ]


def test_list_dir_symlink_entries(ctx, tree):
    (tree / "zlink").symlink_to("file1.txt")
    (tree / "zdirlink").symlink_to("subdir2")
    got = {e["name"]: e for e in filesystem.list_dir(ctx, {"path": str(tree)})["entries"]}
    assert got["zlink"]["type"] == "FILE_TYPE_FILE"
    assert got["zlink"]["symlinkTarget"] == str(tree / "file1.txt")
    assert got["zlink"]["permissions"].startswith("L")
    assert got["zdirlink"]["type"] == "FILE_TYPE_DIRECTORY"
    # a symlinked directory is listed but not descended into
    deep = filesystem.list_dir(ctx, {"path": str(tree), "depth": 3})["entries"]
    assert not any(e["path"].startswith(str(tree / "zdirlink") + "/") for e in deep)


def test_list_dir_errors(ctx, home, tree):
    err = rpc_error(filesystem.list_dir, ctx, {"path": "missing"})
    assert err.code == "not_found"
    assert err.message.startswith("directory not found: ")
    err = rpc_error(filesystem.list_dir, ctx, {"path": "tree/file1.txt"})
    assert (err.code, err.message) == (
        "invalid_argument",
        f"path is not a directory: {tree}/file1.txt",
    )
    (home / "loop1").symlink_to(home / "loop2")
    (home / "loop2").symlink_to(home / "loop1")
    err = rpc_error(filesystem.list_dir, ctx, {"path": "loop1"})
    assert err.code == "failed_precondition"
    assert err.message == f'cyclic symlink or chain >255 links at "{home}/loop1"'


def test_ensure_dirs_refuses_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(filesystem.EnsureDirsError, match="path is a file"):
        filesystem.ensure_dirs(str(tmp_path / "f" / "sub"), 0, 0)
