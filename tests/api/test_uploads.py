"""The upload links of template builds (`hearth.api._uploads`, spec §5.1): each takes one
upload, only until it expires, and says which of the two it was when refused; a team
holds a bounded number of unused ones. On a clock the test moves."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.api._errors import ApiError
from hearth.api._uploads import (
    FILES_DIR,
    FILES_TTL,
    MAX_GRANTS,
    SWEEP_INTERVAL,
    TOKEN_TTL,
    UPLOAD_PATH,
    Uploads,
    sweep,
)

TEAM = "3f2b8a9e-0000-4000-8000-000000000001"
HASH = "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _token(url: str) -> str:
    prefix = f"http://api{UPLOAD_PATH}/"
    assert url.startswith(prefix)
    return url[len(prefix) :]


async def _refused(uploads: Uploads, token: str) -> ApiError:
    with pytest.raises(ApiError) as refused:
        await uploads.receive(token, _body(b"tar"), 3)
    return refused.value


async def test_a_link_takes_one_upload(tmp_path: Path) -> None:
    uploads = Uploads(tmp_path, clock=Clock())
    token = _token(uploads.grant(TEAM, HASH, "http://api/"))
    await uploads.receive(token, _body(b"t", b"ar"), 3)
    assert uploads.path(TEAM, HASH).read_bytes() == b"tar"
    again = await _refused(uploads, token)
    assert (again.status, again.message) == (410, "upload link was used already: ask for a new one")
    assert uploads.path(TEAM, HASH).read_bytes() == b"tar"  # the second did not overwrite it
    assert (await _refused(uploads, "made-up")).status == 404


async def test_a_failed_upload_spends_its_link(tmp_path: Path) -> None:
    uploads = Uploads(tmp_path, clock=Clock())
    token = _token(uploads.grant(TEAM, HASH, "http://api/"))
    with pytest.raises(ApiError) as short:
        await uploads.receive(token, _body(b"ta"), 3)
    assert short.value.status == 400
    assert not uploads.present(TEAM, HASH)  # nothing half-written is left in place
    assert not list(uploads.path(TEAM, HASH).parent.iterdir())
    assert (await _refused(uploads, token)).status == 410


async def test_a_link_expires(tmp_path: Path) -> None:
    clock = Clock()
    uploads = Uploads(tmp_path, clock=clock)
    token = _token(uploads.grant(TEAM, HASH, "http://api/"))
    clock.now += TOKEN_TTL
    expired = await _refused(uploads, token)
    assert (expired.status, expired.message) == (410, "upload link has expired: ask for a new one")
    assert not uploads.present(TEAM, HASH)
    # Long after, it is forgotten (the next grant clears it out): as unknown as a made-up one.
    clock.now += TOKEN_TTL
    fresh = _token(uploads.grant(TEAM, HASH, "http://api/"))
    assert (await _refused(uploads, token)).status == 404
    await uploads.receive(fresh, _body(b"tar"), 3)
    assert uploads.present(TEAM, HASH)


async def test_a_link_just_before_its_end_works(tmp_path: Path) -> None:
    clock = Clock()
    uploads = Uploads(tmp_path, clock=clock)
    token = _token(uploads.grant(TEAM, HASH, "http://api/"))
    clock.now += TOKEN_TTL - 0.001
    await uploads.receive(token, _body(b"tar"), None)
    assert uploads.present(TEAM, HASH)


def test_a_team_holds_a_bounded_number_of_unused_links(tmp_path: Path) -> None:
    clock = Clock()
    uploads = Uploads(tmp_path, clock=clock)
    for _ in range(MAX_GRANTS):
        uploads.grant(TEAM, HASH, "http://api/")
    with pytest.raises(ApiError) as refused:
        uploads.grant(TEAM, HASH, "http://api/")
    assert refused.value.status == 429
    other = "3f2b8a9e-0000-4000-8000-000000000002"
    uploads.grant(other, HASH, "http://api/")  # another team's are its own
    clock.now += TOKEN_TTL  # expired links no longer count
    uploads.grant(TEAM, HASH, "http://api/")


async def test_kept_tars_go_when_unused_for_their_ttl(tmp_path: Path) -> None:
    clock = Clock()
    uploads = Uploads(tmp_path, clock=clock)
    for files_hash in (HASH, "cd" * 32):
        await uploads.receive(
            _token(uploads.grant(TEAM, files_hash, "http://api/")), _body(b"x"), 1
        )
    kept, stale = uploads.path(TEAM, HASH), uploads.path(TEAM, "cd" * 32)
    partial = kept.with_name(f".{kept.name}.0000.part")  # an upload cut off mid-way
    partial.write_bytes(b"half")
    now = time.time()
    os.utime(stale, (now - FILES_TTL - 60,) * 2)
    os.utime(kept, (now - FILES_TTL - 60,) * 2)
    os.utime(partial, (now - TOKEN_TTL - 60,) * 2)
    assert uploads.use(TEAM, HASH) == kept  # a build's use renews it

    assert sorted(sweep(tmp_path / FILES_DIR, time.time())) == sorted([stale, partial])
    assert uploads.present(TEAM, HASH) and not uploads.present(TEAM, "cd" * 32)
    assert uploads.use(TEAM, "cd" * 32) is None


async def test_sweeps_run_at_most_once_an_interval(tmp_path: Path) -> None:
    clock = Clock()
    uploads = Uploads(tmp_path, clock=clock)
    await uploads.receive(_token(uploads.grant(TEAM, HASH, "http://api/")), _body(b"x"), 1)
    await uploads.sweep_if_due()  # the first sweep: nothing is old yet
    old = time.time() - FILES_TTL - 60
    os.utime(uploads.path(TEAM, HASH), (old, old))
    clock.now += SWEEP_INTERVAL - 1
    await uploads.sweep_if_due()
    assert uploads.path(TEAM, HASH).is_file()  # not due yet
    clock.now += 2
    await uploads.sweep_if_due()
    assert not uploads.path(TEAM, HASH).exists()
