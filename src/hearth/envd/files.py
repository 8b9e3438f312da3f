"""GET and POST /files: download and upload, with v1 URL signing, as Go envd 0.6.13.

Both stream: a download is read from disk in 1 MiB pieces (or handed to the transport
for sendfile, see FileBody) and an upload is written as it arrives, multipart bodies
included, so a 100 MB file never sits in memory.
"""

from __future__ import annotations

import contextlib
import os
import stat as st
from collections.abc import Iterator

from hearth.envd import users
from hearth.envd.context import Context
from hearth.envd.entry import go_error, http_date, replace_metadata, validate_metadata
from hearth.envd.errors import RpcError
from hearth.envd.filesystem import EnsureDirsError, ensure_dirs, expand_for
from hearth.envd.http11 import BadRequest, Request, Response

CHUNK = 1 << 20
SMALL_FILE = 256 * 1024  # served as one bytes body (with Content-Length)
READ_OPERATION = "read"
WRITE_OPERATION = "write"
_TSPECIALS = set('()<>@,;:\\"/[]?=')


# --- auth and user ----------------------------------------------------------------------


def _bad_expiration(value: str) -> Response:
    return Response.error(
        400,
        f"Invalid format for parameter signature_expiration: error binding string parameter: "
        f'strconv.ParseInt: parsing "{value}": invalid syntax',
    )


def signature(path: str, operation: str, username: str, token: str, expiration: int | None) -> str:
    """`v1_` + unpadded base64 of sha256("path:operation:username:token[:expiration]")."""
    import base64
    import hashlib

    parts = [path, operation, username, token]
    if expiration is not None:
        parts.append(str(expiration))
    digest = hashlib.sha256(":".join(parts).encode("utf-8", "surrogateescape")).digest()
    return "v1_" + base64.b64encode(digest).decode().rstrip("=")


def check_signing(req: Request, ctx: Context, operation: str) -> Response | None:
    """None when the request may proceed, else the 400/401 response (Go's validateSigning)."""
    raw_exp = req.arg("signature_expiration")
    expiration = None
    if raw_exp is not None:
        try:
            expiration = int(raw_exp)
        except ValueError:
            return _bad_expiration(raw_exp)
    token = ctx.state.access_token
    if not token:
        return None
    import hmac

    header = req.headers.get("x-access-token", "")
    if header:
        if not ctx.state.accepts(header):
            return Response.error(401, "access token present in header but does not match")
        return None
    given = req.arg("signature")
    if given is None:
        return Response.error(401, "missing signature query parameter")
    expected = signature(
        req.arg("path") or "", operation, req.arg("username") or "", token, expiration
    )
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape")):
        return Response.error(401, "invalid signature")
    if expiration is not None:
        import time

        if expiration < int(time.time()):
            return Response.error(401, "signature is already expired")
    return None


def _user(req: Request, ctx: Context) -> users.User | Response:
    name = req.arg("username")
    if name is None:
        name = ctx.state.default_user
    try:
        return users.lookup(name)
    except users.UnknownUser:
        return Response.error(401, f"error looking up user '{name}': user: unknown user {name}")


def _expand(ctx: Context, user: users.User, raw: str) -> str:
    """The absolute path; RpcError (invalid_argument) for `~otheruser` forms."""
    return expand_for(user, raw, ctx.state.default_workdir)


# --- GET --------------------------------------------------------------------------------


def _parse_accept_encoding(header: str) -> tuple[list[tuple[str, float]], bool]:
    """(codings with q, sorted best first; whether identity is unacceptable)."""
    codings: list[tuple[str, float]] = []
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            param = param.strip()
            if param[:2].lower() == "q=":
                with contextlib.suppress(ValueError):
                    q = float(param[2:])
        codings.append((name.strip().lower(), q))
    identity_rejected = any(n == "identity" and q == 0 for n, q in codings)
    if not any(n == "identity" and q > 0 for n, q in codings) and any(
        n == "*" and q == 0 for n, q in codings
    ):
        identity_rejected = True
    codings.sort(key=lambda c: -c[1])
    return codings, identity_rejected


def negotiate_encoding(header: str) -> str | None:
    """ "gzip" or "identity" for an Accept-Encoding value; None when nothing acceptable."""
    if not header:
        return "identity"
    codings, identity_rejected = _parse_accept_encoding(header)
    if not identity_rejected and len([name for name, q in codings if q > 0]) > 1:
        # A list of codings is an HTTP client's default header, not a request for
        # compression; the SDK asks for `gzip` alone when its user wants it. Gzip costs
        # ten times the throughput on a fast link, so serve identity, which is allowed.
        return "identity"
    for name, q in codings:
        if q == 0:
            continue
        if name == "identity":
            return "identity"
        if name == "*":
            return "gzip" if identity_rejected else "identity"
        if name == "gzip":
            return "gzip"
    return None if identity_rejected else "identity"


def content_disposition(filename: str) -> str:
    """`inline; filename=...` quoted like Go's mime.FormatMediaType."""
    raw = filename.encode("utf-8", "surrogateescape")
    if any((b < 0x20 or b > 0x7E) and b != 0x09 for b in raw):
        out = []
        for b in raw:
            c = chr(b)
            if b <= 0x20 or b >= 0x7F or c in "*'%" or c in _TSPECIALS:
                out.append(f"%{b:02X}")
            else:
                out.append(c)
        return "inline; filename*=utf-8''" + "".join(out)
    if raw and all(0x20 < b < 0x7F and chr(b) not in _TSPECIALS for b in raw):
        return "inline; filename=" + filename
    return 'inline; filename="' + filename.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_http_date(value: str) -> int | None:
    from email.utils import parsedate_tz

    try:
        parsed = parsedate_tz(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    from email.utils import mktime_tz

    return int(mktime_tz(parsed))


def _parse_range(header: str, size: int) -> list[tuple[int, int]] | str:
    """Go's parseRange: [(start, length)], or the error text."""
    if not header.startswith("bytes="):
        return "invalid range"
    ranges: list[tuple[int, int]] = []
    no_overlap = False
    for spec in header[6:].split(","):
        spec = spec.strip()
        if not spec:
            continue
        first, dash, last = spec.partition("-")
        first, last = first.strip(), last.strip()
        if not dash:
            return "invalid range"
        if not first:
            if not last.isdigit():
                return "invalid range"
            n = min(int(last), size)
            ranges.append((size - n, n))
            continue
        if not first.isdigit():
            return "invalid range"
        start = int(first)
        if start >= size:
            no_overlap = True
            continue
        if not last:
            ranges.append((start, size - start))
            continue
        if not last.isdigit() or start > int(last):
            return "invalid range"
        end = min(int(last), size - 1)
        ranges.append((start, end - start + 1))
    if no_overlap and not ranges:
        return "invalid range: failed to overlap"
    return ranges


class FileBody:
    """A streamed response body: bytes [offset, offset+length) of an open file (length
    None: to EOF). Iterating reads 1 MiB pieces; `close()` closes the file.

    Sendfile hook for the transport: when `length` is not None, it may instead send the
    headers with `Content-Length: <length>` (no chunking) and then
    `socket.sendfile(body.file, body.offset, body.length)`, and call `close()`."""

    def __init__(self, file, offset: int, length: int | None) -> None:
        self.file = file
        self.offset = offset
        self.length = length

    def fileno(self) -> int:
        return self.file.fileno()

    def __iter__(self) -> Iterator[bytes]:
        fd = self.file.fileno()
        pos, left = self.offset, self.length
        while left is None or left > 0:
            data = os.pread(fd, CHUNK if left is None else min(CHUNK, left), pos)
            if not data:
                return
            pos += len(data)
            if left is not None:
                left -= len(data)
            yield data

    def close(self) -> None:
        self.file.close()


def _gzip_body(file) -> Iterator[bytes]:
    import zlib

    try:
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)
        while data := file.read(CHUNK):
            out = comp.compress(data)
            if out:
                yield out
        yield comp.flush()
    finally:
        file.close()


def get_files(req: Request, ctx: Context) -> Response:
    denied = check_signing(req, ctx, READ_OPERATION)
    if denied is not None:
        return denied
    user = _user(req, ctx)
    if isinstance(user, Response):
        return user
    raw = req.arg("path") or ""
    try:
        path = _expand(ctx, user, raw)
    except RpcError as e:
        return Response.error(400, f"error expanding and resolving path '{raw}': {e.message}")
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return Response.error(404, f"path '{path}' does not exist")
    except OSError as e:
        return Response.error(
            500, f"error checking if path exists '{path}': " + go_error("stat", path, e)
        )
    if st.S_ISDIR(info.st_mode):
        return Response.error(400, f"path '{path}' is a directory")

    accept = req.headers.get("accept-encoding", "")
    encoding = negotiate_encoding(accept)
    if encoding is None:
        return Response.error(
            406, "error parsing Accept-Encoding: no acceptable encoding found, supported: [gzip]"
        )
    headers = [("Vary", "Accept-Encoding")]
    conditional = any(
        req.headers.get(h) for h in ("range", "if-modified-since", "if-none-match", "if-range")
    )
    if conditional:
        if accept and _parse_accept_encoding(accept)[1]:
            resp = Response.error(
                406, "identity encoding not acceptable for Range or conditional request"
            )
            resp.headers.append(("Vary", "Accept-Encoding"))
            return resp
        encoding = "identity"

    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the response body
    except OSError as e:
        return Response.error(500, f"error opening file '{path}': " + go_error("open", path, e))
    headers.append(("Content-Disposition", content_disposition(os.path.basename(path))))

    if encoding == "gzip":
        headers += [("Content-Encoding", "gzip"), ("Content-Type", "application/octet-stream")]
        return Response(200, headers, _gzip_body(file))

    try:
        return _serve_content(req, file, info, headers)
    except BaseException:
        file.close()
        raise


def _serve_content(req: Request, file, info: os.stat_result, headers: list) -> Response:
    """http.ServeContent without ETags: Last-Modified, conditions, one byte range."""
    mtime = int(info.st_mtime)
    if mtime > 0:
        headers.append(("Last-Modified", http_date(mtime)))
    status = _preconditions(req, mtime)
    if status is not None:
        file.close()
        return Response(status, headers, b"")
    size = info.st_size
    offset, length, code = 0, (size if st.S_ISREG(info.st_mode) and size > 0 else None), 200
    range_header = req.headers.get("range", "")
    if range_header and _if_range_keeps(req, mtime) and length is not None:
        ranges = _parse_range(range_header, size)
        if isinstance(ranges, str):
            file.close()
            extra = [("Content-Range", f"bytes */{size}")] if "overlap" in ranges else []
            kept = [(k, v) for k, v in headers if k != "Last-Modified"]
            return Response(
                416,
                kept
                + extra
                + [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("X-Content-Type-Options", "nosniff"),
                ],
                (ranges + "\n").encode(),
            )
        if len(ranges) == 1 and ranges[0][1] <= size:
            offset, length = ranges[0]
            code = 206
            headers.append(("Content-Range", f"bytes {offset}-{offset + length - 1}/{size}"))
    headers += [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")]
    if length is not None and length <= SMALL_FILE:
        try:
            data = os.pread(file.fileno(), length, offset)
        finally:
            file.close()
        return Response(code, headers, data)
    return Response(code, headers, FileBody(file, offset, length))


def _preconditions(req: Request, mtime: int) -> int | None:
    """304/412 per RFC 7232 as Go evaluates them for a resource without an ETag."""
    if_match = req.headers.get("if-match")
    if if_match is not None:
        if "*" not in [v.strip() for v in if_match.split(",")]:
            return 412
    else:
        ius = req.headers.get("if-unmodified-since")
        if ius and mtime > 0:
            t = _parse_http_date(ius)
            if t is not None and mtime > t:
                return 412
    inm = req.headers.get("if-none-match")
    if inm is not None:
        if "*" in [v.strip() for v in inm.split(",")]:
            return 304
    elif req.method in ("GET", "HEAD"):
        ims = req.headers.get("if-modified-since")
        if ims and mtime > 0:
            t = _parse_http_date(ims)
            if t is not None and mtime <= t:
                return 304
    return None


def _if_range_keeps(req: Request, mtime: int) -> bool:
    value = req.headers.get("if-range")
    if not value:
        return True
    if value.startswith(('"', "W/")):
        return False  # no ETag here: an entity tag never matches
    t = _parse_http_date(value)
    return t is not None and mtime > 0 and t == mtime


# --- POST -------------------------------------------------------------------------------


class BodyError(Exception):
    """The request body could not be read or decoded."""


class GunzipReader:
    """Streaming gzip decoding of a reader (several members allowed, like Go's)."""

    def __init__(self, src) -> None:
        import zlib

        self.zlib = zlib
        self.src = src
        self.d = zlib.decompressobj(31)
        self.pending = b""
        self.in_member = False

    def prime(self) -> str | None:
        """Read the gzip header now; the error text Go's gzip.NewReader would give."""
        while len(self.pending) < 10:
            data = self._src_read()
            if not data:
                break
            self.pending += data
        if not self.pending:
            return "EOF"
        if len(self.pending) < 10:
            return "unexpected EOF"
        if self.pending[:3] != b"\x1f\x8b\x08":
            return "gzip: invalid header"
        return None

    def _src_read(self) -> bytes:
        try:
            return self.src.read(CHUNK)
        except BadRequest as e:
            raise BodyError(str(e)) from e

    def read(self, n: int) -> bytes:
        while True:
            if self.d.eof:
                rest = self.d.unused_data
                self.d = self.zlib.decompressobj(31)
                self.in_member = False
                self.pending = rest + self.pending
            if self.pending:
                data, self.pending = self.pending, b""
            else:
                data = self._src_read()
                if not data:
                    if self.in_member:
                        raise BodyError("unexpected EOF")
                    return b""
            self.in_member = True
            try:
                out = self.d.decompress(data, n)
            except self.zlib.error as e:
                raise BodyError(f"gzip: {e}") from e
            self.pending = self.d.unconsumed_tail
            if out:
                return out


class _Plain:
    def __init__(self, src) -> None:
        self.src = src

    def read(self, n: int) -> bytes:
        try:
            return self.src.read(n)
        except BadRequest as e:
            raise BodyError(str(e)) from e


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """A media type and its parameters (lower-cased names; quoted strings and RFC 2231
    `name*=utf-8''...` values decoded), leniently like Go's mime.ParseMediaType."""
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        j = i
        while j < n and rest[j] not in "=; \t":
            j += 1
        key = rest[i:j].lower()
        while j < n and rest[j] in " \t":
            j += 1
        if j >= n or rest[j] != "=":
            i = j + 1
            continue
        j += 1
        while j < n and rest[j] in " \t":
            j += 1
        if j < n and rest[j] == '"':
            out = []
            j += 1
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n and rest[j + 1] in _TSPECIALS:
                    j += 1
                out.append(rest[j])
                j += 1
            val = "".join(out)
            j += 1
        else:
            k = j
            while j < n and rest[j] not in "; \t":
                j += 1
            val = rest[k:j]
        if key.endswith("*"):
            from urllib.parse import unquote

            charset, _, encoded = val.partition("'")
            _, _, encoded = encoded.partition("'")
            try:
                val = unquote(encoded, encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeError):
                val = unquote(encoded, encoding="utf-8", errors="surrogateescape")
            key = key[:-1]
            params[key] = val
        elif key and key not in params:
            params[key] = val
        i = j
    return head.strip().lower(), params


class Multipart:
    """A streaming multipart/form-data reader: `next_part()` gives a part's headers
    (lower-cased names) or None at the end; `read(n)` reads the current part's body."""

    def __init__(self, src, boundary: str) -> None:
        self.src = src
        self.delim = b"\r\n--" + boundary.encode("utf-8", "surrogateescape")
        self.buf = bytearray(b"\r\n")  # lets the first delimiter match like the others
        self.eof = False
        self.in_part = False
        self.done = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.src.read(CHUNK)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read(self, n: int) -> bytes:
        if not self.in_part:
            return b""
        delim = self.delim
        while True:
            i = self.buf.find(delim)
            if i == 0:
                self.in_part = False
                return b""
            take = min(n, i if i > 0 else len(self.buf) - len(delim) + 1)
            if take > 0:
                out = bytes(self.buf[:take])
                del self.buf[:take]
                return out
            if not self._fill():
                raise BodyError("multipart: NextPart: EOF")

    def next_part(self) -> dict[str, str] | None:
        if self.done:
            return None
        while self.in_part:  # skip what is left of the previous part
            self.read(CHUNK)
        delim = self.delim
        while True:  # find the next delimiter (the preamble is skipped)
            i = self.buf.find(delim)
            if i >= 0:
                del self.buf[: i + len(delim)]
                break
            keep = len(delim) - 1
            if len(self.buf) > keep:
                del self.buf[: len(self.buf) - keep]
            if not self._fill():
                raise BodyError("multipart: NextPart: EOF")
        while len(self.buf) < 2 and self._fill():
            pass
        if self.buf[:2] == b"--":
            self.done = True
            return None
        while True:  # the rest of the delimiter line, then the header block
            end = self.buf.find(b"\r\n")
            if end >= 0:
                break
            if len(self.buf) > 64 * 1024 or not self._fill():
                raise BodyError("multipart: NextPart: EOF")
        del self.buf[: end + 2]
        if self.buf[:2] == b"\r\n":
            del self.buf[:2]
            headers_raw = b""
        else:
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(self.buf) > 64 * 1024 or not self._fill():
                    raise BodyError("multipart: NextPart: EOF")
            headers_raw = bytes(self.buf[:end])
            del self.buf[: end + 4]
        headers: dict[str, str] = {}
        for line in headers_raw.decode("utf-8", "surrogateescape").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers.setdefault(name.strip().lower(), value.strip())
        self.in_part = True
        return headers


def metadata_headers(req: Request) -> dict[str, str]:
    """X-Metadata-<key> headers as {key lower-cased: first value}; empty keys dropped."""
    out: dict[str, str] = {}
    for name, value in req.raw_headers:
        lower = name.lower()
        if lower.startswith("x-metadata-") and len(lower) > len("x-metadata-"):
            out.setdefault(lower[len("x-metadata-") :], value)
    return out


def _content_length(req: Request) -> int:
    try:
        return int(req.headers.get("content-length", "0"))
    except ValueError:
        return 0


def write_file(
    req: Request, path: str, reader, user: users.User, metadata: dict[str, str]
) -> tuple[int, str] | None:
    """Write one upload to `path` (Go's processFile); (status, message) on failure."""
    import errno

    try:
        ensure_dirs(os.path.dirname(path), user.uid, user.gid)
    except EnsureDirsError as e:
        return 500, f"error ensuring directories: {e}"
    chowned = False
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except OSError as e:
        return 500, "error getting file info: " + go_error("stat", path, e)
    if info is not None:
        if st.S_ISDIR(info.st_mode):
            return 400, f"path is a directory: {path}"
        try:
            os.chown(path, user.uid, user.gid)
            chowned = True
        except FileNotFoundError:
            pass
        except OSError as e:
            return 500, "error changing file ownership: " + go_error("chown", path, e)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            return 507, "not enough inodes available: " + go_error("open", path, e)
        return 500, "error opening file: " + go_error("open", path, e)
    try:
        if not chowned:
            try:
                os.fchown(fd, user.uid, user.gid)
            except OSError as e:
                return 500, "error changing file ownership: " + go_error("chown", path, e)
        try:
            while data := reader.read(CHUNK):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        except BodyError as e:
            return 500, f"error writing file: {e}"
        except OSError as e:
            if e.errno == errno.ENOSPC:
                length = _content_length(req)
                if length > 0:
                    return 507, (
                        f"attempted to write {length} bytes: not enough disk space available"
                    )
                return 507, "not enough disk space available"
            return 500, "error writing file: " + go_error("write", path, e)
        try:
            replace_metadata(fd, metadata)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                return 507, "not enough disk space available"
            return 500, "error writing metadata: " + go_error("setxattr", path, e)
    finally:
        os.close(fd)
    return None


def _uploaded(path: str, metadata: dict[str, str]) -> dict:
    entry: dict[str, object] = {"path": path, "name": os.path.basename(path), "type": "file"}
    if metadata:
        entry["metadata"] = dict(metadata)
    return entry


def post_files(req: Request, ctx: Context) -> Response:
    denied = check_signing(req, ctx, WRITE_OPERATION)
    if denied is not None:
        return denied

    encoding = req.headers.get("content-encoding", "")
    coding = encoding.partition(";")[0].strip().lower()
    if coding in ("", "identity"):
        reader: _Plain | GunzipReader = _Plain(req.body)
    elif coding == "gzip":
        reader = GunzipReader(req.body)
        try:
            problem = reader.prime()
        except BodyError as e:
            problem = str(e)
        if problem:
            return Response.error(
                400, f"error decompressing request body: failed to create gzip reader: {problem}"
            )
    else:
        return Response.error(
            400,
            "error decompressing request body: unsupported Content-Encoding: "
            f"{encoding}, supported: [gzip]",
        )

    user = _user(req, ctx)
    if isinstance(user, Response):
        return user

    metadata = metadata_headers(req)
    problem = validate_metadata(metadata)
    if problem:
        return Response.error(400, f"invalid metadata: {problem}")

    content_type = req.headers.get("content-type", "")
    media, params = parse_params(content_type)
    if media == "application/octet-stream":
        return _raw_upload(req, ctx, user, reader, metadata)
    if media.startswith("multipart/"):
        return _multipart_upload(req, ctx, user, reader, params, metadata)
    return Response.error(
        400,
        f"unsupported content type: {content_type}, "
        "expected multipart/form-data or application/octet-stream",
    )


def _raw_upload(req, ctx, user, reader, metadata) -> Response:
    raw = req.arg("path")
    if raw is None:
        return Response.error(400, "path query parameter is required for raw body upload")
    try:
        path = _expand(ctx, user, raw)
    except RpcError as e:
        return Response.error(400, f"error resolving path: {e.message}")
    failed = write_file(req, path, reader, user, metadata)
    if failed:
        return Response.error(*failed)
    return Response.json(200, [_uploaded(path, metadata)])


def _multipart_upload(req, ctx, user, reader, params, metadata) -> Response:
    boundary = params.get("boundary")
    if not boundary:
        return Response.error(
            500, "error parsing multipart form: no multipart boundary param in Content-Type"
        )
    form = Multipart(reader, boundary)
    uploaded: list[dict] = []
    query_path = req.arg("path")
    while True:
        try:
            headers = form.next_part()
        except BodyError as e:
            return Response.error(500, f"error reading form: {e}")
        if headers is None:
            break
        disposition, dparams = parse_params(headers.get("content-disposition", ""))
        if dparams.get("name") != "file":
            continue
        if query_path is not None:
            raw = query_path
        elif "filename" in dparams:
            raw = dparams["filename"]
        else:
            return Response.error(
                400,
                "error getting multipart custom part file name: "
                "filename not found in Content-Disposition header",
            )
        try:
            path = _expand(ctx, user, raw)
        except RpcError as e:
            return Response.error(400, f"error resolving path: {e.message}")
        if any(u["path"] == path for u in uploaded):
            others = [u["path"] for u in uploaded if u["path"] != path]
            message = (
                f"you cannot upload multiple files to the same path '{path}' in one upload "
                "request, only the first specified file was uploaded"
            )
            if len(others) > 1:
                message += ", also the following files were uploaded: " + ", ".join(others)
            return Response.error(400, message)
        failed = write_file(req, path, form, user, metadata)
        if failed:
            return Response.error(*failed)
        uploaded.append(_uploaded(path, metadata))
    return Response.json(200, uploaded)
