"""Round-trips of the binary protobuf codec used for `application/proto` Connect calls."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from e2b.envd.filesystem import filesystem_pb as sdk_filesystem_pb
from e2b.envd.process import process_pb as sdk_process_pb

from hearth.envd import binary_codec
from hearth.envd.errors import RpcError


def roundtrip(type_name: str, payload: dict) -> tuple[bytes, dict]:
    data = binary_codec.encode(type_name, payload)
    assert isinstance(data, bytes)
    return data, binary_codec.decode(type_name, data)


def test_start_request_with_envs_pty_and_optionals() -> None:
    payload = {
        "process": {
            "cmd": "/bin/bash",
            "args": ["-i", "-l"],
            "envs": {"TERM": "xterm-256color", "LANG": "C.UTF-8", "snake_key": "x"},
            "cwd": "/home/user",
        },
        "pty": {"size": {"cols": 80, "rows": 24}},
        "tag": "t1",
        "stdin": False,  # proto3 optional: an explicit false survives
    }
    data, back = roundtrip("process.StartRequest", payload)
    assert back == payload
    # The SDK's own generated classes read our bytes the same way.
    sdk = sdk_process_pb.StartRequest.from_binary(data)
    assert sdk.process.envs["TERM"] == "xterm-256color"
    assert sdk.pty.size.cols == 80 and sdk.pty.size.rows == 24
    assert sdk.has_field("stdin") and sdk.stdin is False


def test_oneof_selector_and_enum() -> None:
    payload = {"process": {"tag": "_system"}, "signal": "SIGNAL_SIGKILL"}
    data, back = roundtrip("process.SendSignalRequest", payload)
    assert back == payload
    sdk = sdk_process_pb.SendSignalRequest.from_binary(data)
    assert sdk.signal == sdk_process_pb.Signal.SIGKILL
    assert (sdk.process.selector.field, sdk.process.selector.value) == ("tag", "_system")

    _, back = roundtrip("process.ConnectRequest", {"process": {"pid": 4242}})
    assert back == {"process": {"pid": 4242}}
    # Enum numbers are accepted on input; names come out.
    _, back = roundtrip("process.SendSignalRequest", {"process": {"pid": 1}, "signal": 15})
    assert back["signal"] == "SIGNAL_SIGTERM"


def test_process_event_with_bytes() -> None:
    raw = bytes(range(256))
    payload = {"event": {"data": {"stdout": base64.b64encode(raw).decode()}}}
    data, back = roundtrip("process.StartResponse", payload)
    assert back == payload
    assert base64.b64decode(back["event"]["data"]["stdout"]) == raw
    event = sdk_process_pb.StartResponse.from_binary(data).event.event
    assert event.field == "data"
    assert (event.value.output.field, event.value.output.value) == ("stdout", raw)

    end = {"event": {"end": {"exitCode": -1, "status": "signal: killed", "error": "x"}}}
    assert roundtrip("process.ConnectResponse", end)[1] == end
    # Defaults are omitted, like the JSON the SDK sends; an empty message stays present.
    assert roundtrip("process.StartResponse", {"event": {"keepalive": {}}})[1] == {
        "event": {"keepalive": {}}
    }
    _, back = roundtrip("process.StartResponse", {"event": {"end": {"exitCode": 0}}})
    assert back == {"event": {"end": {}}}


def test_entry_info_with_timestamp_and_int64() -> None:
    entry = {
        "name": "big.bin",
        "type": "FILE_TYPE_FILE",
        "path": "/home/user/big.bin",
        "size": 12345678901,
        "mode": 0o644,
        "permissions": "-rw-r--r--",
        "owner": "user",
        "group": "user",
        "modifiedTime": "2024-01-02T03:04:05.123456789Z",
        "metadata": {"user.e2b.k": "v"},
    }
    data, back = roundtrip("filesystem.StatResponse", {"entry": entry})
    assert back["entry"] == {**entry, "size": "12345678901"}  # int64 comes back as a str
    sdk = sdk_filesystem_pb.StatResponse.from_binary(data).entry
    assert sdk.size == 12345678901
    assert sdk.type == sdk_filesystem_pb.FileType.FILE
    assert (sdk.modified_time.seconds, sdk.modified_time.nanos) == (1704164645, 123456789)
    # int64 given as a string encodes identically.
    assert binary_codec.encode("filesystem.EntryInfo", {**entry, "size": "12345678901"}) == (
        binary_codec.encode("filesystem.EntryInfo", entry)
    )


def test_decode_of_sdk_encoded_message() -> None:
    sdk = sdk_filesystem_pb.WatchDirRequest(path="/tmp", recursive=True, include_entry=True)
    assert binary_codec.decode("filesystem.WatchDirRequest", sdk.to_binary()) == {
        "path": "/tmp",
        "recursive": True,
        "includeEntry": True,
    }
    assert binary_codec.decode("filesystem.ListDirRequest", b"") == {}
    # Proto field names (snake_case) encode like their JSON names; unknown keys are ignored.
    assert binary_codec.encode(
        "filesystem.WatchDirRequest", {"include_entry": True, "extra": 1}
    ) == binary_codec.encode("filesystem.WatchDirRequest", {"includeEntry": True})


def test_errors() -> None:
    with pytest.raises(RpcError) as info:
        binary_codec.decode("process.StartRequest", b"\x0a\x05ab")
    assert info.value.code == "invalid_argument"
    with pytest.raises(RpcError) as info:
        binary_codec.encode("process.PTY.Size", {"cols": -1})
    assert info.value.code == "internal"
    with pytest.raises(LookupError):
        binary_codec.decode("nosuch.Message", b"")
    with pytest.raises(LookupError):
        binary_codec.decode("process.NoSuchMessage", b"")


def test_import_is_lazy() -> None:
    code = (
        "import sys, hearth.envd.binary_codec; "
        "print(any(m == 'protobuf' or m.startswith(('protobuf.', 'hearth._proto.')) "
        "for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
