"""Templates and the aliases that name them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from hearth.store._base import StoreBase, utc_now
from hearth.store._records import Conflict, Template
from hearth.store._tables import (
    template_aliases,
    template_build_logs,
    template_builds,
    template_tags,
    templates,
)


class TemplateStore(StoreBase):
    async def upsert_template(
        self,
        template_id: str,
        *,
        team_id: str | None,
        cpu_count: int,
        memory_mb: int,
        disk_size_mb: int,
        envd_version: str,
        build_id: str | None = None,
        aliases: Iterable[str] | None = None,
        public: bool | None = None,
        snapshot_of: str | None = None,
    ) -> Template:
        """Create a template or update the team's own. `aliases` replaces its aliases,
        `public` and `build_id` replace theirs; None keeps each (a new template is
        private unless `team_id` is None). A changed `build_id` counts a build. A new
        template with `snapshot_of` is the snapshot of that sandbox.

        `Conflict` if the template is another team's, or an alias already names another
        template (as its alias or its id).
        """
        updated_at = utc_now()
        async with self._write() as conn:
            existing = (
                await conn.execute(
                    sa.select(templates).where(templates.c.template_id == template_id)
                )
            ).first()
            if existing is not None and existing.team_id != team_id:
                raise Conflict(f"template {template_id!r} belongs to another team")
            await _check_names_free(conn, template_id, [template_id])
            values: dict[str, Any] = {
                "team_id": team_id,
                "cpu_count": cpu_count,
                "memory_mb": memory_mb,
                "disk_size_mb": disk_size_mb,
                "envd_version": envd_version,
                "updated_at": updated_at,
            }
            if public is not None:
                values["public"] = public
            new_build = build_id is not None
            if new_build:
                values["build_id"] = build_id
            if existing is None:
                values.setdefault("public", team_id is None)
                values.update(
                    template_id=template_id,
                    build_id=build_id,
                    created_at=updated_at,
                    build_count=int(new_build),
                    spawn_count=0,
                    last_spawned_at=None,
                    snapshot_of=snapshot_of,
                )
                await conn.execute(sa.insert(templates).values(values))
            else:
                if new_build and build_id != existing.build_id:
                    values["build_count"] = templates.c.build_count + 1
                await conn.execute(
                    sa.update(templates)
                    .where(templates.c.template_id == template_id)
                    .values(values)
                )
            if aliases is not None:
                names = list(dict.fromkeys(aliases))
                await _check_names_free(conn, template_id, names)
                await conn.execute(
                    sa.delete(template_aliases).where(template_aliases.c.template_id == template_id)
                )
                if names:
                    await conn.execute(
                        sa.insert(template_aliases),
                        [{"alias": a, "template_id": template_id} for a in names],
                    )
            return (await _templates(conn, templates.c.template_id == template_id))[0]

    async def get_template(self, team_id: str, id_or_alias: str) -> Template | None:
        """The template with this id or alias if the team may use it (its own or
        public), else None."""
        visible = sa.or_(templates.c.team_id == team_id, templates.c.public.is_(True))
        async with self._read() as conn:
            found = await _templates(conn, sa.and_(_named(id_or_alias), visible))
        return found[0] if found else None

    async def find_template(self, id_or_alias: str) -> Template | None:
        """The template with this id or alias, whichever team owns it: for telling "not
        yours" (403) from "no such template" (404). Not for deciding access."""
        async with self._read() as conn:
            found = await _templates(conn, _named(id_or_alias))
        return found[0] if found else None

    async def list_templates(
        self, team_id: str, *, include_public: bool = False, snapshots: bool = False
    ) -> list[Template]:
        """The team's templates (and every public one, if asked), oldest first; with
        `snapshots`, the team's snapshots instead."""
        where = templates.c.team_id == team_id
        if include_public:
            where = sa.or_(where, templates.c.public.is_(True))
        snapshot_of = templates.c.snapshot_of
        where = sa.and_(where, snapshot_of.is_not(None) if snapshots else snapshot_of.is_(None))
        async with self._read() as conn:
            return await _templates(conn, where)

    async def delete_template(self, team_id: str, template_id: str) -> bool:
        """Delete one of the team's templates (see `delete_template_with_builds`); False
        if it has none such."""
        return await self.delete_template_with_builds(team_id, template_id) is not None

    async def delete_template_with_builds(
        self, team_id: str, template_id: str
    ) -> list[dict[str, Any]] | None:
        """Delete one of the team's templates with its aliases, tags, builds and their
        logs. The artifacts of the builds that had one, oldest first, for the caller to
        release; None if the team has no such template."""
        async with self._write() as conn:
            # Locked: a build created or logged meanwhile waits, then finds nothing.
            owned = (
                await conn.execute(
                    sa.select(templates.c.template_id)
                    .where(templates.c.template_id == template_id, templates.c.team_id == team_id)
                    .with_for_update()
                )
            ).first()
            if owned is None:
                return None
            of_template = template_builds.c.template_id == template_id
            builds = (
                await conn.execute(
                    sa.select(template_builds.c.build_id, template_builds.c.artifact)
                    .where(of_template)
                    .order_by(template_builds.c.created_at, template_builds.c.build_id)
                    .with_for_update()
                )
            ).all()
            await conn.execute(
                sa.delete(template_build_logs).where(
                    template_build_logs.c.build_id.in_(
                        sa.select(template_builds.c.build_id).where(of_template)
                    )
                )
            )
            await conn.execute(sa.delete(template_builds).where(of_template))
            for table in (template_tags, template_aliases, templates):
                await conn.execute(sa.delete(table).where(table.c.template_id == template_id))
        return [build.artifact for build in builds if build.artifact is not None]

    async def record_template_spawn(self, template_id: str, at: datetime | None = None) -> None:
        """Count a sandbox started from the template (`spawnCount`, `lastSpawnedAt`)."""
        async with self._write() as conn:
            await conn.execute(
                sa.update(templates)
                .where(templates.c.template_id == template_id)
                .values(spawn_count=templates.c.spawn_count + 1, last_spawned_at=at or utc_now())
            )


def _named(id_or_alias: str) -> sa.ColumnElement[bool]:
    by_alias = sa.select(template_aliases.c.template_id).where(
        template_aliases.c.alias == id_or_alias
    )
    return sa.or_(templates.c.template_id == id_or_alias, templates.c.template_id.in_(by_alias))


async def _check_names_free(conn: AsyncConnection, template_id: str, names: list[str]) -> None:
    """Raise `Conflict` if any of `names` is another template's id or alias."""
    if not names:
        return
    taken_ids = sa.select(templates.c.template_id.label("name")).where(
        templates.c.template_id.in_(names), templates.c.template_id != template_id
    )
    taken_aliases = sa.select(template_aliases.c.alias.label("name")).where(
        template_aliases.c.alias.in_(names), template_aliases.c.template_id != template_id
    )
    taken = (await conn.execute(sa.union(taken_ids, taken_aliases))).scalars().all()
    if taken:
        raise Conflict(f"template name(s) already in use: {', '.join(sorted(taken))}")


async def _templates(conn: AsyncConnection, where: sa.ColumnElement[bool]) -> list[Template]:
    rows = (
        await conn.execute(
            sa.select(templates)
            .where(where)
            .order_by(templates.c.created_at, templates.c.template_id)
        )
    ).all()
    if not rows:
        return []
    ids = [row.template_id for row in rows]
    aliases: dict[str, list[str]] = {i: [] for i in ids}
    for alias, template_id in await conn.execute(
        sa.select(template_aliases.c.alias, template_aliases.c.template_id)
        .where(template_aliases.c.template_id.in_(ids))
        .order_by(template_aliases.c.alias)
    ):
        aliases[template_id].append(alias)
    return [Template(**row._mapping, aliases=tuple(aliases[row.template_id])) for row in rows]
