"""GET/POST /files (hearth.envd.files), called directly with hand-built requests."""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import io
import json
import os
import socket
import threading
import time
import types
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from hearth.envd import files, users
from hearth.envd.context import Context
from hearth.envd.http11 import Body, Connection, Request
from hearth.envd.state import EnvdState

UID, GID = 4321, 4322  # the ids of the conftest account

TOKEN = "secret-token"


class FakeBody:
    def __init__(self, data: bytes, piece: int = 64 * 1024) -> None:
        self.stream = io.BytesIO(data)
        self.piece = piece

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(min(n, self.piece) if n >= 0 else -1)


@pytest.fixture
def user(envd_user, monkeypatch):
    u = envd_user
    real_lookup = users.lookup

    def lookup(name):
        return u if name == "user" else real_lookup(name)

    monkeypatch.setattr(users, "lookup", lookup)
    return u


@pytest.fixture
def ctx(user):
    return Context(EnvdState(default_user="user"), user, {}, None)


def request(method, target, body=b"", headers=None, raw_headers=None) -> Request:
    split = urlsplit(target)
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    raw = raw_headers or list((headers or {}).items())
    if isinstance(body, bytes | bytearray):
        hdrs.setdefault("content-length", str(len(body)))
        body = FakeBody(bytes(body))
    return Request(
        method=method,
        target=target,
        path=split.path,
        query=parse_qs(split.query, keep_blank_values=True),
        headers=hdrs,
        body=body,
        raw_headers=raw,
    )


def body_of(resp) -> bytes:
    if isinstance(resp.body, bytes | bytearray):
        return bytes(resp.body)
    try:
        return b"".join(resp.body)
    finally:
        close = getattr(resp.body, "close", None)
        if close:
            close()


def message(resp) -> str:
    return json.loads(body_of(resp))["message"]


def header(resp, name):
    for k, v in resp.headers:
        if k.lower() == name.lower():
            return v
    return None


def sign(path, op, username, expiration=None, token=TOKEN):
    raw = f"{path}:{op}:{username}:{token}" + (f":{expiration}" if expiration is not None else "")
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode().rstrip("=")


def qsign(*args, **kwargs):
    """sign() quoted for a query string (standard base64 may contain + and /)."""
    return quote(sign(*args, **kwargs), safe="")


def multipart(parts, boundary="XyZboundary123"):
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# --- signing ----------------------------------------------------------------------------


def test_signature_format():
    got = files.signature("/a.txt", "read", "user", TOKEN, None)
    assert got == sign("/a.txt", "read", "user")
    assert got.startswith("v1_") and "=" not in got and len(got) == 3 + 43
    assert files.signature("/a", "write", "", TOKEN, 123) == sign("/a", "write", "", 123)


@pytest.fixture
def secured(ctx, home):
    ctx.state.access_token = TOKEN
    (home / "f.txt").write_text("data")
    return ctx


def test_get_without_token_configured_needs_no_signature(ctx, home):
    (home / "f.txt").write_text("data")
    resp = files.get_files(request("GET", "/files?path=f.txt"), ctx)
    assert resp.status == 200
    assert body_of(resp) == b"data"


def test_signing_failures(secured, home):
    path = str(home / "f.txt")
    q = quote(path)
    cases = [
        (f"/files?path={q}", {}, "missing signature query parameter"),
        (f"/files?path={q}&signature=v1_bogus", {}, "invalid signature"),
        (
            f"/files?path={q}",
            {"X-Access-Token": "wrong"},
            "access token present in header but does not match",
        ),
        (
            f"/files?path={q}&signature={qsign(path, 'read', '', 1)}&signature_expiration=1",
            {},
            "signature is already expired",
        ),
        (  # signature made for another expiration
            f"/files?path={q}&signature={qsign(path, 'read', '', 10**10)}"
            "&signature_expiration=99999999999",
            {},
            "invalid signature",
        ),
        (  # a write signature does not grant reads
            f"/files?path={q}&signature={qsign(path, 'write', '')}",
            {},
            "invalid signature",
        ),
    ]
    for target, headers, want in cases:
        resp = files.get_files(request("GET", target, headers=headers), secured)
        assert (resp.status, message(resp)) == (401, want), target


def test_signing_successes(secured, home):
    path = str(home / "f.txt")
    q = quote(path)
    exp = int(time.time()) + 600
    for target, headers in [
        (f"/files?path={q}", {"X-Access-Token": TOKEN}),
        (f"/files?path={q}&signature={qsign(path, 'read', '')}", {}),
        (
            f"/files?path={q}&signature={qsign(path, 'read', '', exp)}&signature_expiration={exp}",
            {},
        ),
        (f"/files?path={q}&username=user&signature={qsign(path, 'read', 'user')}", {}),
    ]:
        resp = files.get_files(request("GET", target, headers=headers), secured)
        assert resp.status == 200, (target, body_of(resp))
        assert body_of(resp) == b"data"


def test_valid_signature_on_missing_file_is_404(secured, home):
    path = str(home / "missing.txt")
    target = f"/files?path={quote(path)}&signature={qsign(path, 'read', '')}"
    resp = files.get_files(request("GET", target), secured)
    assert (resp.status, message(resp)) == (404, f"path '{path}' does not exist")


def test_signed_upload(secured, home):
    path = str(home / "up.txt")
    target = f"/files?path={quote(path)}&signature={qsign(path, 'write', '')}"
    headers = {"Content-Type": "application/octet-stream"}
    resp = files.post_files(request("POST", target, b"signed", headers), secured)
    assert resp.status == 200
    assert (home / "up.txt").read_bytes() == b"signed"
    resp = files.post_files(request("POST", f"/files?path={quote(path)}", b"x", headers), secured)
    assert (resp.status, message(resp)) == (401, "missing signature query parameter")


def test_bad_signature_expiration_is_400(secured):
    resp = files.get_files(request("GET", "/files?path=f.txt&signature_expiration=abc"), secured)
    assert resp.status == 400


# --- GET --------------------------------------------------------------------------------


def test_get_headers_and_errors(ctx, home):
    (home / "my document.pdf").write_bytes(b"%PDF")
    resp = files.get_files(request("GET", "/files?path=my%20document.pdf"), ctx)
    assert resp.status == 200
    assert header(resp, "Content-Disposition") == 'inline; filename="my document.pdf"'
    assert header(resp, "Content-Type") == "application/octet-stream"
    assert header(resp, "Vary") == "Accept-Encoding"
    assert header(resp, "Accept-Ranges") == "bytes"
    assert header(resp, "Last-Modified").endswith(" GMT")
    assert body_of(resp) == b"%PDF"

    resp = files.get_files(request("GET", "/files?path=nope.txt"), ctx)
    assert (resp.status, message(resp)) == (404, f"path '{home}/nope.txt' does not exist")
    resp = files.get_files(request("GET", "/files"), ctx)  # empty path: the home directory
    assert (resp.status, message(resp)) == (400, f"path '{home}' is a directory")
    resp = files.get_files(request("GET", "/files?path=x&username=nosuchuser"), ctx)
    assert resp.status == 401
    assert message(resp) == "error looking up user 'nosuchuser': user: unknown user nosuchuser"


def test_get_relative_path_uses_requested_users_home(ctx, home):
    (home / "relative").mkdir()
    (home / "relative" / "test.txt").write_text("rel")
    resp = files.get_files(request("GET", "/files?path=relative/test.txt&username=user"), ctx)
    assert body_of(resp) == b"rel"


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("test.txt", "inline; filename=test.txt"),
        ("archive.tar.gz", "inline; filename=archive.tar.gz"),
        (".env", "inline; filename=.env"),
        ("my document.pdf", 'inline; filename="my document.pdf"'),
        ('file"name.txt', 'inline; filename="file\\"name.txt"'),
        ("file\\name.txt", 'inline; filename="file\\\\name.txt"'),
        ("\u6587\u6863.pdf", "inline; filename*=utf-8''%E6%96%87%E6%A1%A3.pdf"),
    ],
)
def test_content_disposition_like_go(name, want):
    assert files.content_disposition(name) == want


@pytest.mark.parametrize(
    ("accept", "want"),
    [
        ("", "identity"),
        ("gzip", "gzip"),
        ("GZIP", "gzip"),
        # A client's default list is not an opt-in to compression: identity is faster.
        ("deflate, gzip, br", "identity"),
        ("gzip, deflate", "identity"),
        ("gzip, deflate, identity;q=0", "gzip"),
        ("identity", "identity"),
        ("gzip;q=0", "identity"),
        ("identity;q=0", None),
        ("*;q=0", None),
        ("*", "identity"),
        ("gzip;q=0, *;q=1", "identity"),
        ("identity;q=0, *;q=1", "gzip"),
        ("br", "identity"),
        ("gzip;q=abc", "gzip"),
        ("GZIP;Q=0.5, *", "identity"),
    ],
)
def test_negotiate_encoding(accept, want):
    assert files.negotiate_encoding(accept) == want


def test_get_gzip(ctx, home):
    data = os.urandom(1000) + b"a" * 3_000_000
    (home / "big.bin").write_bytes(data)
    req = request("GET", "/files?path=big.bin", headers={"Accept-Encoding": "gzip"})
    resp = files.get_files(req, ctx)
    assert resp.status == 200
    assert header(resp, "Content-Encoding") == "gzip"
    assert header(resp, "Vary") == "Accept-Encoding"
    assert gzip.decompress(body_of(resp)) == data


def test_get_406(ctx, home):
    (home / "f").write_text("0123456789")
    resp = files.get_files(
        request("GET", "/files?path=f", headers={"Accept-Encoding": "*;q=0"}), ctx
    )
    assert resp.status == 406
    assert message(resp) == (
        "error parsing Accept-Encoding: no acceptable encoding found, supported: [gzip]"
    )
    req = request(
        "GET",
        "/files?path=f",
        headers={"Accept-Encoding": "gzip; q=1,*; q=0", "Range": "bytes=0-4"},
    )
    resp = files.get_files(req, ctx)
    assert resp.status == 406
    assert header(resp, "Vary") == "Accept-Encoding"


def test_get_ranges(ctx, home):
    (home / "f").write_bytes(b"0123456789")

    def get(rng, **extra):
        headers = {"Range": rng, **extra}
        return files.get_files(request("GET", "/files?path=f", headers=headers), ctx)

    resp = get("bytes=2-5")
    assert (resp.status, body_of(resp)) == (206, b"2345")
    assert header(resp, "Content-Range") == "bytes 2-5/10"
    resp = get("bytes=-3")
    assert (resp.status, body_of(resp)) == (206, b"789")
    resp = get("bytes=7-")
    assert (resp.status, body_of(resp)) == (206, b"789")
    resp = get("bytes=8-100")
    assert (resp.status, body_of(resp), header(resp, "Content-Range")) == (
        206,
        b"89",
        "bytes 8-9/10",
    )
    resp = get("bytes=20-30")
    assert resp.status == 416
    assert header(resp, "Content-Range") == "bytes */10"
    resp = get("bytes=5-2")
    assert resp.status == 416
    resp = get("bytes=0-1,4-5")  # several ranges: served whole
    assert (resp.status, body_of(resp)) == (200, b"0123456789")
    resp = get("bytes=2-5", **{"Accept-Encoding": "gzip"})  # Range wins over gzip
    assert (resp.status, body_of(resp), header(resp, "Content-Encoding")) == (206, b"2345", None)
    resp = get("bytes=2-5", **{"If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"})  # stale If-Range
    assert (resp.status, body_of(resp)) == (200, b"0123456789")


def test_get_if_modified_since(ctx, home):
    (home / "f").write_text("x")
    os.utime(home / "f", (1_700_000_000, 1_700_000_000))
    later = "Wed, 15 Nov 2023 00:00:00 GMT"
    earlier = "Mon, 13 Nov 2023 00:00:00 GMT"
    resp = files.get_files(
        request("GET", "/files?path=f", headers={"If-Modified-Since": later}), ctx
    )
    assert (resp.status, body_of(resp)) == (304, b"")
    assert header(resp, "Last-Modified") == "Tue, 14 Nov 2023 22:13:20 GMT"
    resp = files.get_files(
        request("GET", "/files?path=f", headers={"If-Modified-Since": earlier}), ctx
    )
    assert (resp.status, body_of(resp)) == (200, b"x")


def test_get_large_file_streams_in_chunks(ctx, home):
    data = os.urandom(3 * files.CHUNK + 123)
    (home / "big").write_bytes(data)
    resp = files.get_files(request("GET", "/files?path=big"), ctx)
    assert isinstance(resp.body, files.FileBody)
    assert (resp.body.offset, resp.body.length) == (0, len(data))
    pieces = list(resp.body)
    resp.body.close()
    assert max(len(p) for p in pieces) <= files.CHUNK
    assert b"".join(pieces) == data
    # a large range streams too, and exposes the window for sendfile
    req = request("GET", "/files?path=big", headers={"Range": f"bytes=100-{len(data) - 1}"})
    resp = files.get_files(req, ctx)
    assert resp.status == 206
    assert (resp.body.offset, resp.body.length) == (100, len(data) - 100)
    assert body_of(resp) == data[100:]


# --- POST -------------------------------------------------------------------------------


def test_post_multipart_several_files(ctx, home):
    body, headers = multipart(
        [
            ("file", str(home / "a.txt"), b"alpha"),
            ("other", None, b"ignored"),
            ("file", "sub/dir/b.txt", b"beta\r\n--not-the-boundary\r\n"),
        ]
    )
    resp = files.post_files(request("POST", "/files", body, headers), ctx)
    assert resp.status == 200, body_of(resp)
    assert json.loads(body_of(resp)) == [
        {"path": str(home / "a.txt"), "name": "a.txt", "type": "file"},
        {"path": str(home / "sub/dir/b.txt"), "name": "b.txt", "type": "file"},
    ]
    assert (home / "a.txt").read_bytes() == b"alpha"
    assert (home / "sub/dir/b.txt").read_bytes() == b"beta\r\n--not-the-boundary\r\n"
    for p in ("a.txt", "sub", "sub/dir", "sub/dir/b.txt"):
        info = os.stat(home / p)
        assert (info.st_uid, info.st_gid) == (UID, GID), p


def test_post_multipart_with_path_query(ctx, home):
    body, headers = multipart([("file", "ignored-name.txt", b"content")])
    resp = files.post_files(request("POST", "/files?path=dest.txt", body, headers), ctx)
    assert resp.status == 200
    assert (home / "dest.txt").read_bytes() == b"content"
    assert not (home / "ignored-name.txt").exists()


def test_post_multipart_same_destination_twice(ctx, home):
    body, headers = multipart([("file", "x.txt", b"1"), ("file", "x.txt", b"2")])
    resp = files.post_files(request("POST", "/files", body, headers), ctx)
    assert resp.status == 400
    assert message(resp) == (
        f"you cannot upload multiple files to the same path '{home}/x.txt' in one upload "
        "request, only the first specified file was uploaded"
    )
    assert (home / "x.txt").read_bytes() == b"1"


def test_post_multipart_large_binary_across_reads(ctx, home):
    data = os.urandom(5 * files.CHUNK + 7)
    body, headers = multipart([("file", "big.bin", data)], boundary="b" * 40)
    req = request("POST", "/files", b"", headers)
    req.body = FakeBody(body, piece=99_991)  # reads that split the delimiter anywhere
    resp = files.post_files(req, ctx)
    assert resp.status == 200
    assert (home / "big.bin").read_bytes() == data


def test_post_multipart_chunked_over_a_socket(ctx, home):
    content = os.urandom(700_000)
    body, headers = multipart([("file", "chunked.bin", content)])
    a, b = socket.socketpair()

    def send():
        for i in range(0, len(body), 65_536):
            piece = body[i : i + 65_536]
            a.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        a.sendall(b"0\r\n\r\n")

    writer = threading.Thread(target=send)
    writer.start()
    try:
        req = request("POST", "/files", b"", {**headers, "Transfer-Encoding": "chunked"})
        req.body = Body(Connection(b), None, chunked=True)
        resp = files.post_files(req, ctx)
    finally:
        writer.join()
        a.close()
        b.close()
    assert resp.status == 200
    assert (home / "chunked.bin").read_bytes() == content


def test_post_multipart_errors(ctx):
    body, headers = multipart([("file", None, b"x")])
    resp = files.post_files(request("POST", "/files", body, headers), ctx)
    assert resp.status == 400
    assert "filename not found in Content-Disposition header" in message(resp)
    truncated = body[: len(body) // 2]
    resp = files.post_files(request("POST", "/files?path=t", truncated, headers), ctx)
    assert resp.status == 500
    resp = files.post_files(
        request("POST", "/files", b"x", {"Content-Type": "multipart/form-data"}), ctx
    )
    assert resp.status == 500
    assert "no multipart boundary" in message(resp)


def test_post_octet_stream(ctx, home):
    headers = {"Content-Type": "application/octet-stream"}
    resp = files.post_files(request("POST", "/files", b"x", headers), ctx)
    assert (resp.status, message(resp)) == (
        400,
        "path query parameter is required for raw body upload",
    )
    (home / "existing.txt").write_text("old content that is longer")
    resp = files.post_files(request("POST", "/files?path=existing.txt", b"new", headers), ctx)
    assert resp.status == 200
    assert json.loads(body_of(resp)) == [
        {"path": str(home / "existing.txt"), "name": "existing.txt", "type": "file"}
    ]
    assert (home / "existing.txt").read_bytes() == b"new"
    assert os.stat(home / "existing.txt").st_uid == UID
    resp = files.post_files(request("POST", "/files?path=a/b/c/n.txt", b"nested", headers), ctx)
    assert resp.status == 200
    assert (home / "a/b/c/n.txt").read_bytes() == b"nested"
    assert os.stat(home / "a/b").st_gid == GID


def test_post_onto_directory_is_400(ctx, home):
    (home / "d").mkdir()
    headers = {"Content-Type": "application/octet-stream"}
    resp = files.post_files(request("POST", "/files?path=d", b"x", headers), ctx)
    assert (resp.status, message(resp)) == (400, f"path is a directory: {home}/d")


def test_post_gzip_bodies(ctx, home):
    data = os.urandom(2_000_000)
    headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}
    resp = files.post_files(request("POST", "/files?path=g.bin", gzip.compress(data), headers), ctx)
    assert resp.status == 200
    assert (home / "g.bin").read_bytes() == data
    two_members = gzip.compress(b"first,") + gzip.compress(b"second")
    resp = files.post_files(request("POST", "/files?path=m.txt", two_members, headers), ctx)
    assert resp.status == 200
    assert (home / "m.txt").read_bytes() == b"first,second"
    body, mp_headers = multipart([("file", "gz-mp.txt", b"inside multipart")])
    resp = files.post_files(
        request("POST", "/files", gzip.compress(body), {**mp_headers, "Content-Encoding": "gzip"}),
        ctx,
    )
    assert resp.status == 200
    assert (home / "gz-mp.txt").read_bytes() == b"inside multipart"
    resp = files.post_files(request("POST", "/files?path=bad", b"not gzip at all", headers), ctx)
    assert resp.status == 400
    assert message(resp).startswith("error decompressing request body: failed to create gzip")
    bad = {"Content-Type": "application/octet-stream", "Content-Encoding": "br"}
    resp = files.post_files(request("POST", "/files?path=bad", b"x", bad), ctx)
    assert (resp.status, message(resp)) == (
        400,
        "error decompressing request body: unsupported Content-Encoding: br, supported: [gzip]",
    )


def test_post_unsupported_content_type(ctx):
    resp = files.post_files(
        request("POST", "/files?path=x", b"{}", {"Content-Type": "application/json"}), ctx
    )
    assert resp.status == 400
    assert message(resp).startswith("unsupported content type: application/json")


def test_post_unknown_user(ctx):
    headers = {"Content-Type": "application/octet-stream"}
    resp = files.post_files(request("POST", "/files?path=x&username=ghost", b"x", headers), ctx)
    assert (resp.status, message(resp)) == (
        401,
        "error looking up user 'ghost': user: unknown user ghost",
    )


def test_post_metadata_headers_replace_metadata(ctx, home):
    raw = [
        ("Content-Type", "application/octet-stream"),
        ("X-Metadata-Author", "mish"),
        ("x-metadata-purpose", "upload"),
        ("X-Metadata-Author", "second value ignored"),
        ("X-Metadata-", "empty key dropped"),
    ]
    headers = {"Content-Type": "application/octet-stream"}
    req = request("POST", "/files?path=m.txt", b"x", headers, raw_headers=raw)
    resp = files.post_files(req, ctx)
    assert resp.status == 200
    assert json.loads(body_of(resp))[0]["metadata"] == {"author": "mish", "purpose": "upload"}
    assert os.getxattr(home / "m.txt", "user.e2b.author") == b"mish"
    # an upload without metadata headers clears it
    resp = files.post_files(request("POST", "/files?path=m.txt", b"y", headers), ctx)
    assert resp.status == 200
    assert "metadata" not in json.loads(body_of(resp))[0]
    assert not [n for n in os.listxattr(home / "m.txt") if n.startswith("user.e2b.")]
    bad = [*raw[:1], ("X-Metadata-Key", "line\nbreak")]
    resp = files.post_files(request("POST", "/files?path=m.txt", b"z", headers, bad), ctx)
    assert resp.status == 400
    assert (home / "m.txt").read_bytes() == b"y"


def test_post_disk_full_is_507(ctx, home, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    fake_os = types.SimpleNamespace(
        **{k: getattr(os, k) for k in dir(os) if not k.startswith("__")}
    )
    fake_os.write = full
    fake_os.path = os.path
    monkeypatch.setattr(files, "os", fake_os)
    headers = {"Content-Type": "application/octet-stream"}
    resp = files.post_files(request("POST", "/files?path=full.bin", b"12345", headers), ctx)
    assert (resp.status, message(resp)) == (
        507,
        "attempted to write 5 bytes: not enough disk space available",
    )
    headers["Transfer-Encoding"] = "chunked"
    req = request("POST", "/files?path=full.bin", b"", headers)
    req.headers.pop("content-length")
    req.body = FakeBody(b"12345")
    resp = files.post_files(req, ctx)
    assert (resp.status, message(resp)) == (507, "not enough disk space available")


def test_parse_params():
    assert files.parse_params('form-data; name="file"; filename="/home/user/a b.txt"') == (
        "form-data",
        {"name": "file", "filename": "/home/user/a b.txt"},
    )
    assert files.parse_params("multipart/form-data; boundary=abc123")[1] == {"boundary": "abc123"}
    assert files.parse_params("form-data; filename*=utf-8''%E6%96%87.txt")[1] == {
        "filename": "\u6587.txt"
    }
    assert files.parse_params('attachment; filename="C:\\dir\\f.txt"')[1]["filename"] == (
        "C:\\dir\\f.txt"  # MSIE-style unescaped backslashes are kept, like Go
    )
