"""The files of a build's COPY steps: one-time upload links, and the tars they bring.

The SDK asks for a link per `filesHash` and PUTs the tar to it with a plain HTTP client,
without the API key (spec §5.1), so the link carries its own authorization: a random
token, good for one upload within TOKEN_TTL, kept in memory by its SHA-256 so that a
lookup by the presented token compares digests, not the secret itself. A link that was
used (whether its upload then succeeded or not) or has expired answers 410 until it is
forgotten, TOKEN_TTL after it was made; one never made, 404. A team holds at most
MAX_GRANTS unused links at a time. Tars are kept per team under
`<data_dir>/template-files/<team id>/<hash>`: a team's next build that copies the same
files finds them present and uploads nothing. A tar no build has asked for in FILES_TTL
goes (each use renews it), swept at most every SWEEP_INTERVAL, with what an upload cut
off mid-way left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from hearth.api._errors import ApiError

TOKEN_TTL = 3600.0  # seconds: the SDK's own upload timeout is an hour
MAX_GRANTS = 1000  # unused links per team (a build asks for one per COPY step)
FILES_TTL = 7 * 24 * 3600.0  # seconds a kept tar lives unused
SWEEP_INTERVAL = 3600.0  # seconds between two sweeps of the kept tars
UPLOAD_PATH = "/_hearth/uploads"
FILES_DIR = "template-files"
# The SDK's hashes are SHA-256 hex; anything of these characters is a safe file name.
_HASH = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TEAM = re.compile(r"[A-Za-z0-9-]{1,64}")


@dataclass
class _Grant:
    team_id: str
    files_hash: str
    expires: float  # on the clock of `Uploads`
    used: bool = False


class Uploads:
    def __init__(
        self, data_dir: Path | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._root = data_dir / FILES_DIR if data_dir is not None else None
        self._grants: dict[bytes, _Grant] = {}
        self._clock = clock
        self._swept: float | None = None  # when, on `clock`

    def path(self, team_id: str, files_hash: str) -> Path:
        """Where the team's tar of `files_hash` is (or would be) kept."""
        if self._root is None:
            raise ApiError(500, "this server has no data directory to keep uploaded files in")
        if not _HASH.fullmatch(files_hash):
            raise ApiError(400, f"Invalid files hash: {files_hash!r}")
        if not _TEAM.fullmatch(team_id):  # ids are UUIDs; a path is never built from more
            raise ApiError(500, "invalid team id")
        return self._root / team_id / files_hash

    def present(self, team_id: str, files_hash: str) -> bool:
        return self.use(team_id, files_hash) is not None

    def use(self, team_id: str, files_hash: str) -> Path | None:
        """The team's tar of `files_hash`, kept another FILES_TTL from now; None if it is
        not there."""
        path = self.path(team_id, files_hash)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    async def sweep_if_due(self) -> None:
        """Remove what `sweep` would, if SWEEP_INTERVAL has passed since the last time."""
        moment = self._clock()
        if self._root is None or (
            self._swept is not None and moment - self._swept < SWEEP_INTERVAL
        ):
            return
        self._swept = moment
        await asyncio.to_thread(sweep, self._root, time.time())

    def grant(self, team_id: str, files_hash: str, base_url: str) -> str:
        """A one-time URL under `base_url` that accepts the team's tar of `files_hash`."""
        self.path(team_id, files_hash)  # validates before anything is promised
        moment = self._clock()
        for key in [k for k, g in self._grants.items() if g.expires + TOKEN_TTL <= moment]:
            del self._grants[key]  # long past: its token is as unknown as a made-up one
        unused = sum(
            1
            for g in self._grants.values()
            if g.team_id == team_id and not g.used and g.expires > moment
        )
        if unused >= MAX_GRANTS:
            raise ApiError(
                429, f"at most {MAX_GRANTS} upload links can be open at once: use them first"
            )
        token = secrets.token_urlsafe(32)
        self._grants[_digest(token)] = _Grant(team_id, files_hash, moment + TOKEN_TTL)
        return f"{base_url.rstrip('/')}{UPLOAD_PATH}/{token}"

    async def receive(
        self, token: str, body: AsyncIterator[bytes], content_length: int | None
    ) -> None:
        """Write the upload of `token` into place (whole or not at all). The token is
        spent by this call, whatever its outcome: 410 if it was spent already or has
        expired, 404 if it was never made."""
        grant = self._grants.get(_digest(token))
        if grant is None:
            raise ApiError(404, "upload link not found")
        if grant.used:
            raise ApiError(410, "upload link was used already: ask for a new one")
        if grant.expires <= self._clock():
            raise ApiError(410, "upload link has expired: ask for a new one")
        grant.used = True
        target = self.path(grant.team_id, grant.files_hash)
        await asyncio.to_thread(target.parent.mkdir, mode=0o700, parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            received = 0
            with open(partial, "wb") as out:
                async for chunk in body:
                    received += len(chunk)
                    await asyncio.to_thread(out.write, chunk)
            if content_length is not None and received != content_length:
                raise ApiError(400, f"received {received} bytes of {content_length}")
            await asyncio.to_thread(os.replace, partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


def sweep(root: Path, now: float) -> list[Path]:
    """Remove the tars under `root` unused for FILES_TTL, partial uploads older than
    TOKEN_TTL (their upload can no longer be going on); what was removed. A file that
    goes meanwhile is skipped. Team directories stay: an upload may be about to write
    into one."""
    removed = []
    for team in root.iterdir() if root.is_dir() else ():
        for file in team.iterdir():
            ttl = TOKEN_TTL if file.name.endswith(".part") else FILES_TTL
            with contextlib.suppress(FileNotFoundError):
                if now - file.stat().st_mtime > ttl:
                    file.unlink()
                    removed.append(file)
    return removed


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
