"""Our envd .proto files must describe exactly the wire shapes the E2B SDK was built with.

The installed `e2b` SDK carries the descriptors of E2B's envd protos in its generated
protobuf-py modules; every message, field, enum and RPC of ours is compared with them.
"""

from __future__ import annotations

from typing import Any

import pytest
from e2b.envd.filesystem import filesystem_pb as sdk_filesystem_pb
from e2b.envd.process import process_pb as sdk_process_pb
from protobuf import DescEnum, DescFile, DescMessage

from hearth._proto.filesystem import filesystem_pb
from hearth._proto.process import process_pb

PAIRS = {
    "process": (process_pb.desc(), sdk_process_pb.desc()),
    "filesystem": (filesystem_pb.desc(), sdk_filesystem_pb.desc()),
}


def _messages(file: DescFile) -> dict[str, DescMessage]:
    found: dict[str, DescMessage] = {}
    pending = list(file.messages)
    while pending:
        msg = pending.pop()
        found[msg.type_name] = msg
        pending.extend(msg.nested_messages)
    return found


def _enums(file: DescFile) -> dict[str, DescEnum]:
    found = {e.type_name: e for e in file.enums}
    for msg in _messages(file).values():
        found.update({e.type_name: e for e in msg.nested_enums})
    return found


def _field_shape(msg: DescMessage) -> dict[int, dict[str, Any]]:
    oneof_names = [o.name for o in msg.proto.oneof_decl]
    shape = {}
    for field in msg.fields:
        p = field.proto
        shape[field.number] = {
            "name": field.name,
            "json_name": field.json_name,
            "type": int(p.type),
            "type_name": p.type_name,
            "label": int(p.label),
            "proto3_optional": bool(p.proto3_optional),
            "oneof": oneof_names[p.oneof_index] if p.has_field("oneof_index") else None,
            "presence": int(field.presence),
            "kind": type(field.value).__name__,
        }
    return shape


def _message_shape(msg: DescMessage) -> dict[str, Any]:
    return {
        "fields": _field_shape(msg),
        "oneofs": [o.name for o in msg.proto.oneof_decl],
        "map_entry": bool(msg.proto.options and msg.proto.options.map_entry),
        "nested": sorted(m.type_name for m in msg.nested_messages),
        "nested_enums": sorted(e.type_name for e in msg.nested_enums),
    }


@pytest.mark.parametrize("package", sorted(PAIRS))
def test_file_header(package: str) -> None:
    ours, sdk = PAIRS[package]
    assert ours.name == sdk.name == f"{package}/{package}.proto"
    assert ours.proto.package == sdk.proto.package == package
    assert ours.proto.syntax == sdk.proto.syntax == "proto3"
    assert list(ours.proto.dependency) == list(sdk.proto.dependency)


@pytest.mark.parametrize("package", sorted(PAIRS))
def test_same_message_and_enum_names(package: str) -> None:
    ours, sdk = PAIRS[package]
    assert sorted(_messages(ours)) == sorted(_messages(sdk))
    assert sorted(_enums(ours)) == sorted(_enums(sdk))


@pytest.mark.parametrize(
    ("package", "type_name"),
    [(pkg, name) for pkg, (_, sdk) in sorted(PAIRS.items()) for name in sorted(_messages(sdk))],
)
def test_message_matches_sdk(package: str, type_name: str) -> None:
    ours, sdk = (_messages(f)[type_name] for f in PAIRS[package])
    ours_shape, sdk_shape = _message_shape(ours), _message_shape(sdk)
    assert ours_shape == sdk_shape


@pytest.mark.parametrize(
    ("package", "type_name"),
    [(pkg, name) for pkg, (_, sdk) in sorted(PAIRS.items()) for name in sorted(_enums(sdk))],
)
def test_enum_matches_sdk(package: str, type_name: str) -> None:
    ours, sdk = (_enums(f)[type_name] for f in PAIRS[package])
    assert ours.open == sdk.open
    assert [(v.name, v.number) for v in ours.values] == [(v.name, v.number) for v in sdk.values]


@pytest.mark.parametrize("package", sorted(PAIRS))
def test_services_match_sdk(package: str) -> None:
    ours, sdk = PAIRS[package]

    def shape(file: DescFile) -> dict[str, Any]:
        return {
            svc.type_name: [
                (
                    m.name,
                    m.input.type_name,
                    m.output.type_name,
                    bool(m.proto.client_streaming),
                    bool(m.proto.server_streaming),
                    str(m.method_kind),
                )
                for m in svc.methods
            ]
            for svc in file.services
        }

    ours_services, sdk_services = shape(ours), shape(sdk)
    assert ours_services, "no services found"
    assert ours_services == sdk_services


def test_known_shapes() -> None:
    """Spot checks that keep the comparison itself honest."""
    assert len(_messages(PAIRS["process"][1])) >= 30
    assert len(_messages(PAIRS["filesystem"][1])) >= 20
    entry = _field_shape(filesystem_pb.EntryInfo.desc())
    assert entry[4]["name"] == "size" and entry[4]["kind"] == "DescFieldValueScalar"
    assert entry[12]["name"] == "is_symlink"
    start = _field_shape(process_pb.StartRequest.desc())
    assert start[2]["proto3_optional"] and start[2]["oneof"] == "_pty"
    methods = {m.name: m for m in process_pb.desc().services[0].methods}
    assert methods["Start"].proto.server_streaming
    assert methods["StreamInput"].proto.client_streaming
