"""Blocking work in a thread that a cancellation does not abandon halfway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


async def to_thread_to_the_end(
    work: Callable[..., T], *args: object, taken: Callable[[T], object] | None = None
) -> T:
    """asyncio.to_thread, but a cancelled caller still waits for the thread to finish
    before the cancellation propagates, and `taken(result)` runs as soon as the thread
    has returned, cancelled or not: what it acquired is always handed to the caller's
    stack, never left to a thread that goes on alone."""
    future = asyncio.ensure_future(asyncio.to_thread(work, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(future)
        raise
    finally:
        done = future.done() and not future.cancelled() and future.exception() is None
        if taken is not None and done:
            taken(future.result())


def threaded_release(
    sandbox_id: str,
    what: str,
    errors: list[BaseException],
    release: Callable[..., object],
    *args: object,
) -> Callable[[], Awaitable[None]]:
    """An exit-stack callback that runs the blocking `release(*args)` in a thread. What
    is gone already (FileNotFoundError) is fine; any other failure is logged and kept in
    `errors`, and never stops the releases after it."""

    async def run() -> None:
        try:
            await asyncio.to_thread(release, *args)
        except FileNotFoundError:
            pass
        except Exception as e:
            log.error("sandbox %s: releasing %s failed: %s", sandbox_id, what, e)
            errors.append(e)

    return run
