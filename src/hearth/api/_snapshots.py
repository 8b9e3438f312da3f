"""Snapshots as the API runs them (spec §2.3 "Snapshots", §7.2): a sandbox's state taken
as a build of a template of the team's, which creates start from like any other.

Named snapshots are `team/name:tag` (tag `default` unless given) and taking one again
under the same name gives its template a new build that the tag then names; without a
name each snapshot is a template of its own, `<templateID>:default`. A snapshot keeps
memory where the node's runtime can (microVMs), and files alone where it cannot
(containers: their creates run the template's start command again); the list says
which. Deleting one is deleting its template (`DELETE /templates/{id}`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from hearth.api._errors import ApiError
from hearth.api._names import DEFAULT_TAG, new_id, parse_name
from hearth.api._sandboxes import Sandboxes
from hearth.api._settings import ApiSettings
from hearth.store import Conflict, Sandbox, Store, Team, Template
from hearth.template.artifact import Artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str  # "team/name:tag", or "<templateID>:tag" for an unnamed one
    names: list[str]  # "team/name", without the tag
    sandbox_id: str | None  # the sandbox it was taken of
    memory: bool  # whether its creates continue the captured processes
    created_at: datetime


class Snapshots:
    def __init__(self, store: Store, settings: ApiSettings, sandboxes: Sandboxes) -> None:
        self._store = store
        self._settings = settings
        self._sandboxes = sandboxes

    async def create(
        self, team: Team, sandbox_id: str, *, name: str | None, memory: bool | None
    ) -> SnapshotInfo:
        """Take a snapshot of the team's sandbox, under `name` if given."""
        slug = team.name.lower()
        alias, tag = None, DEFAULT_TAG
        template: Template | None = None
        if name:
            parsed = parse_name(name)
            if parsed.namespace is not None and parsed.namespace != slug:
                raise ApiError(400, f"namespace '{parsed.namespace}' must match your team '{slug}'")
            alias, tag = parsed.alias, parsed.tag_or_default
            template = await self._store.find_template(alias)
            if template is not None and template.team_id != team.id:
                raise ApiError(400, f"Alias `{alias}` is already taken")
        if template is None:
            await self._check_limit(team)
        sandbox, artifact = await self._sandboxes.capture(
            team, sandbox_id, memory=memory is not False
        )
        try:
            template = await self._record(team, template, alias, tag, sandbox, artifact)
        except BaseException:
            await self._sandboxes.forget([artifact])
            raise
        return _info(template, tag, slug, sandbox_id, artifact, datetime.now(UTC))

    async def _check_limit(self, team: Team) -> None:
        limit = self._settings.max_snapshots
        if limit and len(await self._store.list_templates(team.id, snapshots=True)) >= limit:
            raise ApiError(
                429,
                f"you have reached the maximum number of snapshots ({limit}): delete some"
                " with Sandbox.delete_snapshot (DELETE /templates/{snapshotID}) first",
            )

    async def _record(
        self,
        team: Team,
        template: Template | None,
        alias: str | None,
        tag: str,
        sandbox: Sandbox,
        artifact: Artifact,
    ) -> Template:
        if template is None:
            try:
                template = await self._store.upsert_template(
                    new_id(),
                    team_id=team.id,
                    cpu_count=sandbox.cpu_count,
                    memory_mb=sandbox.memory_mb,
                    disk_size_mb=sandbox.disk_size_mb,
                    envd_version=sandbox.envd_version,
                    aliases=[alias] if alias else [],
                    public=False,
                    snapshot_of=sandbox.sandbox_id,
                )
            except Conflict:  # another request took the name meanwhile
                raise ApiError(400, f"Alias `{alias}` is already taken") from None
        try:
            build = await self._store.create_build(
                template.template_id,
                build_id=str(uuid.uuid4()),
                team_id=team.id,
                cpu_count=sandbox.cpu_count,
                memory_mb=sandbox.memory_mb,
                disk_size_mb=sandbox.disk_size_mb,
                tags=[tag],
            )
        except Conflict:  # the template was deleted meanwhile
            raise ApiError(404, f"Snapshot '{alias}' not found") from None
        recipe = {"snapshotOf": sandbox.sandbox_id, "memory": artifact.memory}
        await self._store.update_build(
            build.build_id,
            status="ready",
            recipe=recipe,
            artifact=artifact.to_json(),
            envd_version=sandbox.envd_version,
        )
        return template

    async def list(
        self, team: Team, *, sandbox_id: str | None, name: str | None
    ) -> list[SnapshotInfo]:
        """The team's snapshots (one per tag), newest first; of one sandbox, or matching
        `name` (an id or name, with a namespace or tag if given)."""
        slug = team.name.lower()
        wanted = parse_name(name) if name else None
        if wanted is not None and wanted.namespace not in (None, slug):
            return []
        found: list[SnapshotInfo] = []
        for template in await self._store.list_templates(team.id, snapshots=True):
            if sandbox_id is not None and template.snapshot_of != sandbox_id:
                continue
            if wanted is not None and wanted.alias not in (template.template_id, *template.aliases):
                continue
            for tagged in await self._store.list_tags(template.template_id):
                if wanted is not None and wanted.tag is not None and tagged.tag != wanted.tag:
                    continue
                build = await self._store.get_build(template.template_id, tagged.build_id)
                if build is None or build.artifact is None:
                    continue
                artifact = Artifact.from_json(build.artifact)
                found.append(
                    _info(
                        template, tagged.tag, slug, template.snapshot_of, artifact, build.created_at
                    )
                )
        found.sort(key=lambda s: (s.created_at, s.snapshot_id), reverse=True)
        return found


def _info(
    template: Template,
    tag: str,
    slug: str,
    sandbox_id: str | None,
    artifact: Artifact,
    created_at: datetime,
) -> SnapshotInfo:
    alias = template.aliases[0] if template.aliases else None
    names = [f"{slug}/{alias}"] if alias else []
    return SnapshotInfo(
        snapshot_id=f"{names[0] if names else template.template_id}:{tag}",
        names=names,
        sandbox_id=sandbox_id,
        memory=artifact.memory,
        created_at=created_at,
    )
