"""The HTTP/1.1 and Connect layers of envd, over a real socket pair."""

import json
import socket
import struct

from hearth.envd import connect
from hearth.envd.http11 import Connection, Response, read_request, write_response
from hearth.envd.process import end_event


def _request(raw: bytes):
    a, b = socket.socketpair()
    a.sendall(raw)
    a.shutdown(socket.SHUT_WR)
    return read_request(Connection(b)), a, b


def test_chunked_body_split_across_reads_is_reassembled():
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    req, _, _ = _request(
        b"POST /x?a=1&a=2&b= HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    )
    assert req.method == "POST" and req.path == "/x"
    assert req.query == {"a": ["1", "2"], "b": [""]}
    assert req.body.read() == b"hello world"


def test_two_requests_on_one_connection():
    raw = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n"
    a, b = socket.socketpair()
    a.sendall(raw)
    a.shutdown(socket.SHUT_WR)
    conn = Connection(b)
    first = read_request(conn)
    assert first.body.read() == b"abc"
    second = read_request(conn)
    assert (second.method, second.path, second.body.read()) == ("GET", "/b", b"")
    assert read_request(conn) is None


def test_streamed_response_is_chunked_and_complete():
    a, b = socket.socketpair()
    write_response(Connection(b), Response(200, [], iter([b"ab", b"", b"cde"])))
    b.close()
    data = b"".join(iter(lambda: a.recv(65536), b""))
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"


def test_envelopes_parse_across_piece_boundaries():
    payloads = [json.dumps({"n": i}).encode() for i in range(3)]
    wire = b"".join(connect.envelope(0, p) for p in payloads) + connect.end_stream(None)

    class Pieces:
        def __iter__(self):
            return iter([wire[i : i + 3] for i in range(0, len(wire), 3)])

    got = list(connect.read_envelopes(Pieces()))
    assert [p for _, p in got[:3]] == payloads
    assert got[3] == (connect.FLAG_END_STREAM, b"{}")


def test_end_stream_error_shape():
    frame = connect.end_stream(connect.RpcError("not_found", "nope"))
    flags, size = struct.unpack(">BI", frame[:5])
    assert flags == 2
    assert json.loads(frame[5 : 5 + size]) == {"error": {"code": "not_found", "message": "nope"}}


def test_snake_case_keys_fold_but_map_keys_do_not():
    folded = connect.camel_keys({"watcher_id": "w", "process": {"envs": {"MY_VAR": "1"}}})
    assert folded == {"watcherId": "w", "process": {"envs": {"MY_VAR": "1"}}}


def test_end_events_match_go_envd():
    assert end_event(0) == {"exitCode": 0, "exited": True, "status": "exit status 0"}
    assert end_event(3)["error"] == "exit status 3"
    killed = end_event(-9)
    assert killed == {
        "exitCode": -1,
        "exited": False,
        "status": "signal: killed",
        "error": "signal: killed",
    }
