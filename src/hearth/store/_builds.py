"""Template builds, their logs, and the tags that name a template's builds.

A build goes waiting → building → ready or error. When it becomes ready, in the same
transaction, it takes the tags it was made with and becomes its template's build. A
build's log is numbered from 0 in the order it was written, so a client paging it by
offset sees every entry exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from hearth.store._base import StoreBase, utc_now
from hearth.store._records import Build, BuildLogEntry, NotFound, TemplateTag
from hearth.store._tables import template_build_logs, template_builds, template_tags, templates

STATUSES = ("waiting", "building", "ready", "error")
UNFINISHED = ("waiting", "building")
FINISHED = ("ready", "error")
# From the least to the most severe: a `level` filter keeps its own and the later ones.
LEVELS = ("debug", "info", "warn", "error")


class BuildStore(StoreBase):
    async def create_build(
        self,
        template_id: str,
        *,
        build_id: str,
        team_id: str | None,
        cpu_count: int,
        memory_mb: int,
        disk_size_mb: int,
        tags: list[str],
    ) -> Build:
        """A new waiting build of the template; `Conflict` if there is no such template
        or the build id is taken. `tags` are assigned to it when it becomes ready."""
        now = utc_now()
        row = {
            "build_id": build_id,
            "template_id": template_id,
            "team_id": team_id,
            "status": "waiting",
            "recipe": None,
            "artifact": None,
            "reason": None,
            "cpu_count": cpu_count,
            "memory_mb": memory_mb,
            "disk_size_mb": disk_size_mb,
            "envd_version": None,
            "tags": list(dict.fromkeys(tags)),
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "finished_at": None,
        }
        async with self._write() as conn:
            result = await conn.execute(
                sa.insert(template_builds).values(row).returning(*template_builds.c)
            )
            return _build(result.one())

    async def get_build(self, template_id: str, build_id: str) -> Build | None:
        """The build, or None if there is none such of that template."""
        query = sa.select(template_builds).where(
            template_builds.c.build_id == build_id, template_builds.c.template_id == template_id
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return _build(row) if row else None

    async def list_builds(self, template_id: str) -> list[Build]:
        """The template's builds, newest first."""
        query = (
            sa.select(template_builds)
            .where(template_builds.c.template_id == template_id)
            .order_by(template_builds.c.created_at.desc(), template_builds.c.build_id.desc())
        )
        async with self._read() as conn:
            return [_build(row) for row in await conn.execute(query)]

    async def update_build(
        self,
        build_id: str,
        *,
        status: str | None = None,
        recipe: dict[str, Any] | None = None,
        artifact: dict[str, Any] | None = None,
        reason: dict[str, Any] | None = None,
        envd_version: str | None = None,
    ) -> Build:
        """Change the build; None keeps each field. "building" sets `started_at` (once),
        becoming "ready" or "error" sets `finished_at`.

        Becoming ready also assigns the build its tags and makes it its template's build
        (the template's `build_id`, resources and envd version; one more `build_count`),
        in the same transaction. `NotFound` if there is no such build, `ValueError` for
        an unknown status.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown build status {status!r}: one of {', '.join(STATUSES)}")
        now = utc_now()
        async with self._write() as conn:
            if status == "ready":
                # Its template's row first: deleting a template locks it before its
                # builds, and the same order cannot deadlock.
                of_build = sa.select(template_builds.c.template_id).where(
                    template_builds.c.build_id == build_id
                )
                await conn.execute(
                    sa.select(templates.c.template_id)
                    .where(templates.c.template_id == of_build.scalar_subquery())
                    .with_for_update()
                )
            before = await _lock_build(conn, build_id)
            values: dict[str, Any] = {"updated_at": now}
            changed = {
                "recipe": recipe,
                "artifact": artifact,
                "reason": reason,
                "envd_version": envd_version,
            }
            values.update((name, value) for name, value in changed.items() if value is not None)
            if status is not None:
                values["status"] = status
                if status == "building" and before.started_at is None:
                    values["started_at"] = now
                if status in FINISHED and status != before.status:
                    values["finished_at"] = now
            row = (
                await conn.execute(
                    sa.update(template_builds)
                    .where(template_builds.c.build_id == build_id)
                    .values(values)
                    .returning(*template_builds.c)
                )
            ).one()
            build = _build(row)
            if status == "ready" and before.status != "ready":
                await self._assign_tags(conn, build.template_id, build_id, build.tags, now)
                template: dict[str, Any] = {
                    "build_id": build_id,
                    "cpu_count": build.cpu_count,
                    "memory_mb": build.memory_mb,
                    "disk_size_mb": build.disk_size_mb,
                    "updated_at": now,
                    "build_count": templates.c.build_count + 1,
                }
                if build.envd_version is not None:
                    template["envd_version"] = build.envd_version
                await conn.execute(
                    sa.update(templates)
                    .where(templates.c.template_id == build.template_id)
                    .values(template)
                )
            return build

    async def unfinished_builds(self) -> list[Build]:
        """Every build still waiting or building, oldest first (at a start, none is)."""
        query = (
            sa.select(template_builds)
            .where(template_builds.c.status.in_(UNFINISHED))
            .order_by(template_builds.c.created_at, template_builds.c.build_id)
        )
        async with self._read() as conn:
            return [_build(row) for row in await conn.execute(query)]

    async def all_artifacts(self) -> list[dict[str, Any]]:
        """The artifact of every ready build, oldest first: what layer collection keeps."""
        query = (
            sa.select(template_builds.c.artifact)
            .where(template_builds.c.status == "ready", template_builds.c.artifact.is_not(None))
            .order_by(template_builds.c.created_at, template_builds.c.build_id)
        )
        async with self._read() as conn:
            return list((await conn.execute(query)).scalars())

    # -- logs ----------------------------------------------------------------------------

    async def append_build_logs(
        self, build_id: str, entries: list[tuple[datetime, str, str, str | None]]
    ) -> None:
        """Append (timestamp, level, message, step) entries to the build's log, in order.

        The entries take the next numbers after the build's last one; appends to one
        build wait for each other (its row is locked), so numbers are never taken twice.
        `NotFound` if there is no such build, `ValueError` for an unknown level.
        """
        for _, level, _, _ in entries:
            _level_rank(level)
        if not entries:
            return
        async with self._write() as conn:
            await _lock_build(conn, build_id)
            last = (
                await conn.execute(
                    sa.select(sa.func.max(template_build_logs.c.seq)).where(
                        template_build_logs.c.build_id == build_id
                    )
                )
            ).scalar()
            first = 0 if last is None else last + 1
            rows = [
                {
                    "build_id": build_id,
                    "seq": first + n,
                    "timestamp": timestamp,
                    "level": level,
                    "message": message,
                    "step": step,
                }
                for n, (timestamp, level, message, step) in enumerate(entries)
            ]
            await conn.execute(sa.insert(template_build_logs), rows)

    async def build_logs(
        self,
        build_id: str,
        *,
        offset: int = 0,
        limit: int = 100,
        level: str | None = None,
        direction: str = "forward",
    ) -> list[BuildLogEntry]:
        """At most `limit` of the build's log entries after the first `offset`, oldest
        first ("forward") or newest first ("backward").

        `level` keeps the entries at least that severe (debug < info < warn < error);
        `offset` counts the entries it keeps, so growing offsets page without gaps or
        repeats.
        """
        if direction not in ("forward", "backward"):
            raise ValueError(f"unknown direction {direction!r}: forward or backward")
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit cannot be negative")
        log = template_build_logs
        query = sa.select(log.c.seq, log.c.timestamp, log.c.level, log.c.message, log.c.step)
        query = query.where(log.c.build_id == build_id)
        if level is not None:
            query = query.where(log.c.level.in_(LEVELS[_level_rank(level) :]))
        order = log.c.seq.desc() if direction == "backward" else log.c.seq
        query = query.order_by(order).offset(offset).limit(limit)
        async with self._read() as conn:
            return [BuildLogEntry(**row._mapping) for row in await conn.execute(query)]

    async def count_build_logs(self, build_id: str) -> int:
        query = sa.select(sa.func.count()).where(template_build_logs.c.build_id == build_id)
        async with self._read() as conn:
            return (await conn.execute(query)).scalar_one()

    # -- tags ----------------------------------------------------------------------------

    async def set_tags(self, template_id: str, build_id: str, tags: list[str]) -> list[TemplateTag]:
        """Point the template's `tags` at the build, moving any that named another."""
        now = utc_now()
        async with self._write() as conn:
            return await self._assign_tags(conn, template_id, build_id, tags, now)

    async def remove_tags(self, template_id: str, tags: list[str]) -> int:
        """Remove the template's `tags`; how many it had."""
        if not tags:
            return 0
        async with self._write() as conn:
            result = await conn.execute(
                sa.delete(template_tags).where(
                    template_tags.c.template_id == template_id, template_tags.c.tag.in_(tags)
                )
            )
        return result.rowcount

    async def list_tags(self, template_id: str) -> list[TemplateTag]:
        """The template's tags in the order of their names."""
        query = (
            sa.select(template_tags)
            .where(template_tags.c.template_id == template_id)
            .order_by(template_tags.c.tag)
        )
        async with self._read() as conn:
            return [TemplateTag(**row._mapping) for row in await conn.execute(query)]

    async def get_tag(self, template_id: str, tag: str) -> TemplateTag | None:
        query = sa.select(template_tags).where(
            template_tags.c.template_id == template_id, template_tags.c.tag == tag
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return TemplateTag(**row._mapping) if row else None

    async def tagged_build(self, template_id: str, tag: str = "default") -> Build | None:
        """The build the template's tag names, if that build is ready; else None."""
        query = (
            sa.select(template_builds)
            .join(template_tags, template_tags.c.build_id == template_builds.c.build_id)
            .where(
                template_tags.c.template_id == template_id,
                template_tags.c.tag == tag,
                template_builds.c.template_id == template_id,
                template_builds.c.status == "ready",
            )
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return _build(row) if row else None

    async def _assign_tags(
        self,
        conn: AsyncConnection,
        template_id: str,
        build_id: str,
        tags: Iterable[str],
        now: datetime,
    ) -> list[TemplateTag]:
        """Upsert: the newest assignment of a tag wins."""
        names = list(dict.fromkeys(tags))  # one row each: an upsert cannot hit a row twice
        if not names:
            return []
        rows: list[dict[str, Any]] = [
            {"template_id": template_id, "tag": tag, "build_id": build_id, "created_at": now}
            for tag in names
        ]
        insert = (postgresql.insert if self._postgres else sqlite.insert)(template_tags)
        excluded = insert.excluded
        await conn.execute(
            insert.values(rows).on_conflict_do_update(
                index_elements=[template_tags.c.template_id, template_tags.c.tag],
                set_={"build_id": excluded.build_id, "created_at": excluded.created_at},
            )
        )
        return [TemplateTag(**row) for row in rows]


def _build(row: sa.Row[Any]) -> Build:
    return Build(**{**row._mapping, "tags": tuple(row.tags)})


async def _lock_build(conn: AsyncConnection, build_id: str) -> sa.Row[Any]:
    """The build's row, locked until the transaction ends (on SQLite the write lock the
    transaction began with already serialises writers); `NotFound` if there is none."""
    row = (
        await conn.execute(
            sa.select(template_builds)
            .where(template_builds.c.build_id == build_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound(f"no build {build_id!r}")
    return row


def _level_rank(level: str) -> int:
    try:
        return LEVELS.index(level)
    except ValueError:
        raise ValueError(f"unknown log level {level!r}: one of {', '.join(LEVELS)}") from None
