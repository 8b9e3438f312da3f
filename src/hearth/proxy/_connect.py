"""Closing off a Connect stream whose upstream went away, as E2B's proxy does.

A streaming RPC's body is a run of envelopes (a flag byte, a 4-byte big-endian length,
the message). When the sandbox's side breaks at an envelope boundary the client is
sent one more envelope, the end-of-stream one, with the error `unavailable`: the SDK
then probes the sandbox's /health and, answered by the 502 of a sandbox that is gone,
reports it "killed or reached its end of life" (infra `proxy/stream_abort.go`).
Cut inside an envelope, or in any other body, the response can only break.
"""

from __future__ import annotations

import json
import struct

import h11

_STREAM_CONTENT_TYPE = b"application/connect+"
_END_STREAM = 0b00000010
_PREFIX = 5


def stream_end_message(sandbox_id: str) -> str:
    return f"the connection to sandbox {sandbox_id} ended before the stream completed"


class StreamEnvelopes:
    """Where a relayed Connect stream's body stands, so that it can be ended cleanly."""

    def __init__(self) -> None:
        self._prefix = b""
        self._remaining = 0

    @classmethod
    def of(cls, response: h11.Response) -> StreamEnvelopes | None:
        """A tracker for `response` if it is a Connect stream that can be ended late: a
        200 without a Content-Length (one more envelope would overrun it)."""
        if response.status_code != 200:
            return None
        headers = {name.lower(): value for name, value in response.headers}
        content_type = headers.get(b"content-type", b"").lower()
        if not content_type.startswith(_STREAM_CONTENT_TYPE) or b"content-length" in headers:
            return None
        return cls()

    def advance(self, data: bytes) -> None:
        while data:
            if len(self._prefix) < _PREFIX:
                taken = _PREFIX - len(self._prefix)
                self._prefix += data[:taken]
                data = data[taken:]
                if len(self._prefix) == _PREFIX:
                    self._remaining = struct.unpack(">I", self._prefix[1:])[0]
            else:
                step = min(len(data), self._remaining)
                self._remaining -= step
                data = data[step:]
            if len(self._prefix) == _PREFIX and self._remaining == 0:
                self._prefix = b""

    def at_boundary(self) -> bool:
        return not self._prefix and self._remaining == 0

    @staticmethod
    def unavailable(message: str) -> bytes:
        """The end-of-stream envelope that reports the stream `unavailable`."""
        body = json.dumps({"error": {"code": "unavailable", "message": message}}).encode()
        return struct.pack(">BI", _END_STREAM, len(body)) + body
