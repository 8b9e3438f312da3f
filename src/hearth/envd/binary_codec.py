"""Binary protobuf <-> proto-JSON dicts, for envd's Connect transport.

envd's handlers work on proto3 canonical JSON dicts (see rpc.py). The E2B SDKs only ever
send JSON, but a Connect client may ask for `application/proto`; this module converts
those bodies at the edge, using protobuf-py and the code generated from proto/ into
hearth._proto. Importing protobuf costs about a third of a second, so nothing is imported
until the first conversion: importing this module is free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from hearth.envd.errors import RpcError

if TYPE_CHECKING:
    from protobuf import Message

# "process.StartRequest" -> its generated message class; filled on first use.
_CLASSES: dict[str, type[Message]] = {}


def _message_class(type_name: str) -> type[Message]:
    """The generated class of the fully qualified message `type_name`.

    The proto package names the generated module: `pkg.Msg` lives in
    hearth._proto.pkg.pkg_pb, so only the package a call needs is imported.
    """
    cls = _CLASSES.get(type_name)
    if cls is not None:
        return cls
    import importlib

    from protobuf import Registry

    package = type_name.partition(".")[0]
    try:
        module = importlib.import_module(f"hearth._proto.{package}.{package}_pb")
    except ModuleNotFoundError:
        module = None
    desc = Registry(module.desc()).message(type_name) if module is not None else None
    if desc is None:
        raise LookupError(f"unknown protobuf message type {type_name!r}")
    cls = _CLASSES[type_name] = desc.type
    return cls


def decode(type_name: str, data: bytes) -> dict:
    """Parse binary protobuf `data` as `type_name` into its proto-JSON dict.

    Keys are lowerCamelCase; enums are names, bytes standard base64 strings, int64
    decimal strings and Timestamps RFC 3339 strings. Fields at their default value are
    left out, as in the JSON the SDKs send. Unknown fields are dropped.
    Malformed input raises RpcError("invalid_argument").
    """
    cls = _message_class(type_name)
    from protobuf import message_to_json_value

    try:
        message = cls.from_binary(data, ignore_unknown_fields=True)
        value = message_to_json_value(message)
    except (ValueError, TypeError, OverflowError) as e:
        raise RpcError("invalid_argument", f"invalid {type_name} message: {e}") from e
    return cast(dict, value)  # a message's JSON value is always an object


def encode(type_name: str, payload: dict) -> bytes:
    """Serialize the proto-JSON dict `payload` as binary protobuf of `type_name`.

    Accepts what proto-JSON parsing accepts: lowerCamelCase or proto field names, enum
    names or numbers, int64 as str or int, bytes as base64 str, Timestamps as RFC 3339
    str. Keys that are not fields of the message are ignored, as JSON clients ignore
    them. A payload that does not fit the message raises RpcError("internal").
    """
    cls = _message_class(type_name)
    from protobuf import message_from_json_value

    try:
        message = message_from_json_value(cls, payload, ignore_unknown_fields=True)
        return message.to_binary()
    except (ValueError, TypeError, OverflowError) as e:
        raise RpcError("internal", f"cannot encode {type_name}: {e}") from e
