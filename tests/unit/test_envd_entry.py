"""EntryInfo and metadata xattrs (hearth.envd.entry)."""

from __future__ import annotations

import os
import re
import stat

import pytest

from hearth.envd import entry
from hearth.envd.errors import RpcError


@pytest.mark.parametrize(
    ("mode", "text"),
    [
        (stat.S_IFREG | 0o644, "-rw-r--r--"),
        (stat.S_IFREG | 0o000, "----------"),
        (stat.S_IFDIR | 0o755, "drwxr-xr-x"),
        (stat.S_IFLNK | 0o777, "Lrwxrwxrwx"),
        (stat.S_IFREG | stat.S_ISUID | 0o755, "urwxr-xr-x"),
        (stat.S_IFDIR | stat.S_ISGID | 0o755, "dgrwxr-xr-x"),
        (stat.S_IFDIR | stat.S_ISVTX | 0o777, "dtrwxrwxrwx"),
        (stat.S_IFREG | stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o700, "ugtrwx------"),
        (stat.S_IFCHR | 0o666, "Dcrw-rw-rw-"),
        (stat.S_IFBLK | 0o660, "Drw-rw----"),
        (stat.S_IFIFO | 0o644, "prw-r--r--"),
        (stat.S_IFSOCK | 0o755, "Srwxr-xr-x"),
    ],
)
def test_permissions_string_matches_go_filemode(mode, text):
    assert entry.permissions_string(mode) == text


def test_timestamp_uses_protojson_precision():
    assert entry.timestamp(0) == "1970-01-01T00:00:00Z"
    assert entry.timestamp(1_700_000_000 * 10**9) == "2023-11-14T22:13:20Z"
    assert entry.timestamp(1_700_000_000 * 10**9 + 500_000_000) == "2023-11-14T22:13:20.500Z"
    assert entry.timestamp(1_700_000_000 * 10**9 + 1_000) == "2023-11-14T22:13:20.000001Z"
    assert entry.timestamp(1_700_000_000 * 10**9 + 7) == "2023-11-14T22:13:20.000000007Z"


def test_http_date():
    assert entry.http_date(1_700_000_000) == "Tue, 14 Nov 2023 22:13:20 GMT"


def test_regular_file(tmp_path):
    path = tmp_path / "test.txt"
    path.write_bytes(b"Hello, World!")
    path.chmod(0o644)
    os.utime(path, ns=(0, 1_700_000_000 * 10**9 + 123_000_000))
    info = entry.entry_info(str(path))
    assert info == {
        "name": "test.txt",
        "type": "FILE_TYPE_FILE",
        "path": str(path),
        "size": 13,
        "mode": 0o644,
        "permissions": "-rw-r--r--",
        "owner": "root",
        "group": "root",
        "modifiedTime": "2023-11-14T22:13:20.123Z",
    }


def test_directory(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    d.chmod(0o755)
    info = entry.entry_info(str(d))
    assert info["type"] == "FILE_TYPE_DIRECTORY"
    assert info["mode"] == 0o755
    assert info["permissions"] == "drwxr-xr-x"
    assert info["name"] == "dir"
    assert "symlinkTarget" not in info


def test_owner_falls_back_to_numeric_ids(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    os.chown(path, 54321, 54322)
    info = entry.entry_info(str(path))
    assert (info["owner"], info["group"]) == ("54321", "54322")


def test_symlink_reports_target_type_and_mode_but_link_permissions(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("data")
    target.chmod(0o600)
    hop = tmp_path / "hop"
    hop.symlink_to("target.txt")
    link = tmp_path / "link"
    link.symlink_to(hop)
    info = entry.entry_info(str(link))
    assert info["type"] == "FILE_TYPE_FILE"
    assert info["mode"] == 0o600
    assert info["permissions"] == "Lrwxrwxrwx"
    assert info["symlinkTarget"] == str(target)  # fully resolved
    assert info["size"] == len(str(hop))  # lstat size of the link itself
    assert info["path"] == str(link)
    assert info["name"] == "link"


def test_symlink_to_directory(tmp_path):
    (tmp_path / "d").mkdir(mode=0o750)
    (tmp_path / "d").chmod(0o750)
    (tmp_path / "l").symlink_to("d")
    info = entry.entry_info(str(tmp_path / "l"))
    assert info["type"] == "FILE_TYPE_DIRECTORY"
    assert info["mode"] == 0o750
    assert info["symlinkTarget"] == str(tmp_path / "d")


def test_broken_symlink_is_unspecified(tmp_path):
    link = tmp_path / "broken"
    link.symlink_to(tmp_path / "nowhere")
    info = entry.entry_info(str(link))
    assert info["type"] == "FILE_TYPE_UNSPECIFIED"
    assert info["mode"] == 0
    assert info["permissions"] == "Lrwxrwxrwx"
    assert info["symlinkTarget"] == str(link)  # Go keeps the link path when unresolvable


def test_missing_path_is_not_found(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(RpcError) as err:
        entry.entry_info(str(missing))
    assert err.value.code == "not_found"
    assert err.value.message == f"file not found: lstat {missing}: no such file or directory"


def test_modified_time_is_rfc3339(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    stamp = entry.entry_info(str(path))["modifiedTime"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z", stamp)


def test_metadata_replace_and_read(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    os.setxattr(path, "user.other", b"keep")
    entry.replace_metadata(str(path), {"author": "mish", "purpose": "test"})
    assert entry.read_metadata(str(path)) == {"author": "mish", "purpose": "test"}
    assert entry.entry_info(str(path))["metadata"] == {"author": "mish", "purpose": "test"}

    entry.replace_metadata(str(path), {"author": "other"})
    assert entry.read_metadata(str(path)) == {"author": "other"}

    with open(path, "rb") as f:  # by descriptor too
        entry.replace_metadata(f.fileno(), {})
    assert entry.read_metadata(str(path)) is None
    assert "metadata" not in entry.entry_info(str(path))
    assert os.getxattr(path, "user.other") == b"keep"


def test_metadata_skips_non_utf8_values(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    os.setxattr(path, "user.e2b.bad", b"\xff\xfe")
    os.setxattr(path, "user.e2b.good", b"ok")
    assert entry.read_metadata(str(path)) == {"good": "ok"}


def test_validate_metadata():
    assert entry.validate_metadata({"author": "mish"}) is None
    assert entry.validate_metadata({"": "x"}) == "metadata key must not be empty"
    assert "non-printable-ASCII byte 0x0a at offset 1" in entry.validate_metadata({"k": "a\nb"})
    assert "exceeds 246 bytes" in entry.validate_metadata({"k" * 247: "v"})
    big = {f"k{i}": "v" * 1000 for i in range(5)}
    assert entry.validate_metadata(big).startswith("total metadata size")
