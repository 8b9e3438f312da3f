"""Templates as the API runs them: registering builds, their files and start, status and
logs, lists, tags, visibility and deletion (spec §2.5, §5), team-scoped.

A team sees its own templates and the public ones (the built-ins among them); another
team's private template does not exist for it (404), except where infra says "exists,
not yours" (403: the alias check, and changes to a template it can name). A sandbox
starts from the ready build a tag names, never from anything else.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

from hearth.api._builds import Echo, TemplateBuilds
from hearth.api._errors import ApiError
from hearth.api._names import (
    DEFAULT_TAG,
    Name,
    check_build_id,
    clean_tags,
    new_id,
    parse_name,
)
from hearth.api._settings import ApiSettings
from hearth.api._uploads import Uploads
from hearth.node.interface import BuildRequest, Node
from hearth.store import Build, BuildLogEntry, Conflict, Store, Team, Template, TemplateTag
from hearth.template import oci
from hearth.template.artifact import Artifact
from hearth.template.recipe import Recipe, RecipeError

log = logging.getLogger(__name__)

# E2B's defaults and limits for a template's resources (spec §2.5).
DEFAULT_CPU_COUNT = 2
DEFAULT_MEMORY_MB = 1024
MAX_CPU_COUNT = 8
MIN_MEMORY_MB = 128
MAX_MEMORY_MB = 65536


class Templates:
    def __init__(
        self, store: Store, node: Node, settings: ApiSettings, builds: TemplateBuilds
    ) -> None:
        self._store = store
        self._node = node
        self._settings = settings
        self._builds = builds
        self._uploads = Uploads(settings.data_dir)

    # --- register and build --------------------------------------------------------

    async def register(
        self,
        team: Team,
        *,
        name: str | None,
        tags: list[str] | None = None,
        cpu_count: int | None = None,
        memory_mb: int | None = None,
        min_free_disk_mb: int | None = None,
        team_id: str | None = None,
    ) -> tuple[Template, Build]:
        """`POST /v3/templates`: the team's template of that name (made if new) and a
        waiting build of it that takes `default`, the name's tag and `tags` when ready."""
        if team_id is not None and team_id != team.id:
            raise ApiError(400, f"teamID {team_id!r} is not the team of this API key")
        if not name:
            raise ApiError(400, "Name is required")
        parsed = parse_name(name)
        if parsed.namespace is not None and parsed.namespace != team.name.lower():
            raise ApiError(
                400, f"namespace '{parsed.namespace}' must match your team '{team.name}'"
            )
        assigned = clean_tags([DEFAULT_TAG, *([parsed.tag] if parsed.tag else []), *(tags or [])])
        cpu, memory = _check_resources(cpu_count, memory_mb)
        if min_free_disk_mb is not None and min_free_disk_mb < 0:
            raise ApiError(400, "minFreeDiskMb must not be negative")
        # What the sandbox's filesystem may grow by: the default plus the free space asked.
        disk = self._settings.disk_size_mb + (min_free_disk_mb or 0)
        template = await self._store.find_template(parsed.alias)
        if template is not None and template.team_id != team.id:
            raise ApiError(400, f"Alias `{parsed.alias}` is already taken")
        if template is None:
            try:
                template = await self._store.upsert_template(
                    new_id(),
                    team_id=team.id,
                    cpu_count=cpu,
                    memory_mb=memory,
                    disk_size_mb=disk,
                    envd_version=self._settings.envd_version,
                    aliases=[parsed.alias],
                    public=False,
                )
            except Conflict:  # another request took the name meanwhile
                raise ApiError(400, f"Alias `{parsed.alias}` is already taken") from None
        try:
            build = await self._store.create_build(
                template.template_id,
                build_id=str(uuid.uuid4()),
                team_id=team.id,
                cpu_count=cpu,
                memory_mb=memory,
                disk_size_mb=disk,
                tags=assigned,
            )
        except Conflict:  # the template was deleted meanwhile
            raise ApiError(404, f"Template '{parsed.alias}' not found") from None
        return template, build

    async def upload_link(
        self, team: Team, template_ref: str, files_hash: str, base_url: str
    ) -> str | None:
        """None if the team has uploaded these files already, else a one-time URL."""
        await self._owned(team, template_ref)
        await self._uploads.sweep_if_due()
        if self._uploads.present(team.id, files_hash):
            return None
        return self._uploads.grant(team.id, files_hash, base_url)

    async def receive_upload(
        self, token: str, body: AsyncIterator[bytes], content_length: int | None
    ) -> None:
        await self._uploads.receive(token, body, content_length)

    async def start_build(
        self, team: Team, template_ref: str, build_id: str, body: dict[str, Any]
    ) -> None:
        """`POST /v2/templates/{id}/builds/{buildID}`: check everything the build will
        need, then run it in the background."""
        check_build_id(build_id)
        template = await self._owned(team, template_ref)
        build = await self._store.get_build(template.template_id, build_id)
        if build is None:
            raise ApiError(404, f"Build '{build_id}' of template '{template_ref}' not found")
        if build.status != "waiting" or self._builds.running(build_id):
            raise ApiError(409, f"Build '{build_id}' has already been started ({build.status})")
        try:
            recipe = Recipe.from_build_request(
                body,
                cpu_count=build.cpu_count,
                memory_mb=build.memory_mb,
                disk_mb=build.disk_size_mb,
            )
            oci.credentials(recipe.base.registry)  # AWS and GCP are refused here, not later
        except (RecipeError, oci.UnsupportedRegistry) as e:
            raise ApiError(400, str(e)) from None
        parent = await _parent_build(self._store, team.id, recipe)
        files: dict[str, Path] = {}
        for number, step in enumerate(recipe.steps, 1):
            if step.type != "COPY" or step.files_hash is None:
                continue
            path = self._uploads.use(team.id, step.files_hash)
            if path is None:
                raise ApiError(
                    400, f"files for step {number} (hash {step.files_hash}) were not uploaded"
                )
            files[step.files_hash] = path
        request = BuildRequest(
            template_id=template.template_id,
            build_id=build_id,
            team_id=team.id,
            recipe=recipe,
            parent=_artifact(parent),
            files=files,
        )
        self._builds.start(request, recipe=_recorded(recipe, parent))

    # --- build status and logs -----------------------------------------------------

    async def build_status(
        self,
        team: Team,
        template_ref: str,
        build_id: str,
        *,
        offset: int,
        limit: int,
        level: str | None,
    ) -> tuple[Template, Build, list[BuildLogEntry]]:
        """The build and `limit` of its log entries from `offset` (an index into the
        entries at least `level` severe)."""
        template, build = await self._build(team, template_ref, build_id)
        entries = await self._store.build_logs(build_id, offset=offset, limit=limit, level=level)
        return template, build, entries

    async def build_logs(
        self,
        team: Team,
        template_ref: str,
        build_id: str,
        *,
        cursor_ms: int | None,
        limit: int,
        direction: str,
        level: str | None,
    ) -> list[BuildLogEntry]:
        """`limit` entries from the one at `cursor_ms` (a time in ms since the epoch) on,
        oldest first ("forward"), or up to it, newest first ("backward")."""
        _, build = await self._build(team, template_ref, build_id)
        if cursor_ms is None:
            return await self._store.build_logs(
                build.build_id, limit=limit, level=level, direction=direction
            )
        if direction == "forward":
            start = await self._first_after(build.build_id, cursor_ms, level, inclusive=True)
            return await self._store.build_logs(
                build.build_id, offset=start, limit=limit, level=level
            )
        end = await self._first_after(build.build_id, cursor_ms, level, inclusive=False)
        start = max(0, end - limit)
        entries = await self._store.build_logs(
            build.build_id, offset=start, limit=end - start, level=level
        )
        return entries[::-1]

    async def _first_after(
        self, build_id: str, cursor_ms: int, level: str | None, *, inclusive: bool
    ) -> int:
        """The index of the first entry at (or, not `inclusive`, after) `cursor_ms`: a
        binary search over offsets, since entries are written in time order."""
        low, high = 0, await self._store.count_build_logs(build_id)
        while low < high:
            middle = (low + high) // 2
            found = await self._store.build_logs(build_id, offset=middle, limit=1, level=level)
            if not found:  # past the entries `level` keeps
                high = middle
                continue
            at = int(found[0].timestamp.timestamp() * 1000)
            if at < cursor_ms or (not inclusive and at == cursor_ms):
                low = middle + 1
            else:
                high = middle
        return low

    async def _build(self, team: Team, template_ref: str, build_id: str) -> tuple[Template, Build]:
        check_build_id(build_id)
        template = await self._visible(team, template_ref)
        build = await self._store.get_build(template.template_id, build_id)
        if build is None:
            raise ApiError(404, f"Build '{build_id}' of template '{template_ref}' not found")
        return template, build

    # --- read --------------------------------------------------------------------------

    async def list_all(self, team: Team) -> list[tuple[Template, Build | None]]:
        """The team's and the public templates, oldest first, each with its latest build."""
        found = await self._store.list_templates(team.id, include_public=True)
        return [(t, await self._latest(t)) for t in found]

    async def get(self, team: Team, template_ref: str) -> tuple[Template, list[Build]]:
        template = await self._visible(team, template_ref)
        return template, await self._store.list_builds(template.template_id)

    async def tags(self, team: Team, template_ref: str) -> list[TemplateTag]:
        template = await self._visible(team, template_ref)
        return await self._store.list_tags(template.template_id)

    async def alias(self, team: Team, alias: str) -> Template:
        """200 if the team may use it, 403 if it is another team's (it exists), else 404."""
        name = parse_name(alias, what="alias")
        template = await _visible(self._store, team.id, name)
        if template is None:
            if name.namespace is None and await self._store.find_template(name.alias):
                raise ApiError(403, f"You don't have access to template '{alias}'")
            raise ApiError(404, f"Template alias '{alias}' not found")
        return template

    async def _latest(self, template: Template) -> Build | None:
        builds = await self._store.list_builds(template.template_id)
        return builds[0] if builds else None

    # --- change ------------------------------------------------------------------------

    async def delete(self, team: Team, template_ref: str) -> None:
        """Delete the team's template, its builds (a running one is cancelled first) and
        tags; sandboxes started from it keep running on layers the node keeps mounted."""
        if parse_name(template_ref).tag is not None:
            raise ApiError(400, "Template name should not contain a tag: delete deletes all")
        template = await self._owned(team, template_ref)
        async with self._builds.held(template.template_id):
            dropped = await self._store.delete_template_with_builds(team.id, template.template_id)
        if dropped is None:
            raise ApiError(404, f"Template '{template_ref}' not found")
        if dropped:
            await forget_artifacts(
                self._store, self._node, [Artifact.from_json(a) for a in dropped]
            )

    async def set_public(self, team: Team, template_ref: str, public: bool | None) -> Template:
        """Publish or unpublish; 403 for a template of another team (infra's answer)."""
        name = parse_name(template_ref)
        template = await self._store.find_template(name.alias)
        if template is None:
            raise ApiError(404, f"Template '{template_ref}' not found")
        if template.team_id != team.id:
            raise ApiError(403, f"You don't have access to template '{template_ref}'")
        if public is None or public == template.public:
            return template
        return await self._store.upsert_template(
            template.template_id,
            team_id=team.id,
            cpu_count=template.cpu_count,
            memory_mb=template.memory_mb,
            disk_size_mb=template.disk_size_mb,
            envd_version=template.envd_version,
            public=public,
        )

    async def assign_tags(self, team: Team, target: str, tags: list[str]) -> tuple[str, list[str]]:
        """Point `tags` at the build `target` ("name:tag", default `default`) names."""
        name = parse_name(target, what="target")
        if not tags:
            raise ApiError(400, "At least one tag is required")
        cleaned = clean_tags(tags)
        template = await self._owned(team, target)
        source = await self._store.get_tag(template.template_id, name.tag_or_default)
        if source is None:
            raise ApiError(404, f"tag '{name.tag_or_default}' of template '{name.alias}' not found")
        await self._store.set_tags(template.template_id, source.build_id, cleaned)
        return source.build_id, cleaned

    async def remove_tags(self, team: Team, template_ref: str, tags: list[str]) -> None:
        if parse_name(template_ref).tag is not None:
            raise ApiError(
                400, "Template name should not contain a tag, use the 'tags' field instead"
            )
        cleaned = clean_tags(tags)
        if not cleaned:
            raise ApiError(400, "At least one tag is required")
        if DEFAULT_TAG in cleaned:
            raise ApiError(400, f"Cannot delete the '{DEFAULT_TAG}' tag")
        template = await self._owned(team, template_ref)
        await self._store.remove_tags(template.template_id, cleaned)

    # --- access ------------------------------------------------------------------------

    async def _visible(self, team: Team, template_ref: str) -> Template:
        template = await _visible(self._store, team.id, parse_name(template_ref))
        if template is None:
            raise ApiError(404, f"Template '{template_ref}' not found")
        return template

    async def _owned(self, team: Team, template_ref: str) -> Template:
        """The team's own template; a public one of others is visible but not its to
        change (403)."""
        template = await self._visible(team, template_ref)
        if template.team_id != team.id:
            raise ApiError(403, f"You don't have access to template '{template_ref}'")
        return template


async def forget_artifacts(store: Store, node: Node, dropped: list[Artifact]) -> None:
    """Let the node free what only `dropped` used (a deleted template's builds, a fork's
    capture), keeping what any build in the store still names; what sandboxes still use
    goes once they do. A failure is logged: the layers wait for the next deletion."""
    forget = getattr(node, "forget_artifacts", None)
    if forget is None:
        return
    try:
        keep = [Artifact.from_json(a) for a in await store.all_artifacts()]
        await forget(keep=keep, drop=dropped)
    except Exception:
        log.exception("freeing %s failed", ", ".join(a.key for a in dropped))


async def ready_build(
    store: Store, team: Team, ref: str, builds: TemplateBuilds | None = None
) -> tuple[Template, Build, str | None]:
    """What a sandbox of `ref` (an id or name, optionally `:tag`) starts from: the ready
    build its tag names; and the alias to report. 404 otherwise, saying why. A built-in
    template whose first build is running in `builds` (at a server's first start) is
    waited for: its creates must not fail because they came early."""
    name = parse_name(ref, what="template")
    template = await _visible(store, team.id, name)
    if template is None:
        raise ApiError(404, f"template '{ref}' not found")
    build = await store.tagged_build(template.template_id, name.tag_or_default)
    if build is None and template.team_id is None and builds is not None:
        for running in await store.list_builds(template.template_id):
            await builds.wait(running.build_id)
        build = await store.tagged_build(template.template_id, name.tag_or_default)
    if build is None or build.artifact is None:
        if name.tag is not None and await store.get_tag(template.template_id, name.tag) is None:
            raise ApiError(404, f"tag '{name.tag}' of template '{name.alias}' not found")
        history = await store.list_builds(template.template_id)
        latest = f" (its latest build is {history[0].status})" if history else ""
        raise ApiError(404, f"template '{ref}' not found: it has no ready build{latest}")
    alias = name.alias if name.alias in template.aliases else (template.aliases or (None,))[0]
    return template, build, alias


async def ensure_builtin(
    store: Store,
    builds: TemplateBuilds,
    name: str,
    recipe: Recipe,
    *,
    settings: ApiSettings,
    echo: Echo | None = None,
) -> Build | None:
    """Make the built-in template `name` (public, of no team) and build its recipe unless
    its ready default build was made from this very recipe (and parent build). Returns
    the ready build its `default` tag names afterwards: a failed rebuild leaves the one
    before it in place. None if there is none."""
    finished = await start_builtin(store, builds, name, recipe, settings=settings, echo=echo)
    return await finished


async def start_builtin(
    store: Store,
    builds: TemplateBuilds,
    name: str,
    recipe: Recipe,
    *,
    settings: ApiSettings,
    echo: Echo | None = None,
) -> Awaitable[Build | None]:
    """`ensure_builtin` in two halves: returns once the template and its build (if one
    is needed) are recorded and the build runs, so that creates of it wait for it
    (`ready_build`); await the result for what `ensure_builtin` returns."""
    template = await store.find_template(name)
    if template is None:
        template = await store.upsert_template(
            name,
            team_id=None,
            cpu_count=recipe.cpu_count,
            memory_mb=recipe.memory_mb,
            disk_size_mb=settings.disk_size_mb,
            envd_version=settings.envd_version,
            aliases=[name],
            public=True,
        )
    elif template.team_id is not None:
        raise RuntimeError(f"the built-in template name {name!r} is taken by a team's template")
    parent = await _parent_build(store, None, recipe)
    recorded = _recorded(recipe, parent)
    current = await store.tagged_build(name)
    if current is not None and _same(current.recipe, recorded) and builds.on_node(current):
        return _done(current)
    build = await store.create_build(
        name,
        build_id=str(uuid.uuid4()),
        team_id=None,
        cpu_count=recipe.cpu_count,
        memory_mb=recipe.memory_mb,
        disk_size_mb=settings.disk_size_mb,
        tags=[DEFAULT_TAG],
    )
    request = BuildRequest(
        template_id=name,
        build_id=build.build_id,
        team_id=None,
        recipe=recipe,
        parent=_artifact(parent),
    )
    running = builds.start(request, recipe=recorded, echo=echo)

    async def finish() -> Build | None:
        finished = await running
        if finished is None or finished.status != "ready":
            reason = (finished.reason or {}).get("message") if finished else "not recorded"
            log.error("building the %s template failed: %s", name, reason)
        return await store.tagged_build(name)

    return finish()


async def _done(build: Build) -> Build:
    return build


async def _visible(store: Store, team_id: str | None, name: Name) -> Template | None:
    """The template `name` refers to if the team (None: nobody, the built-ins' builds)
    may use it: its own or public, under the namespace named (its owner's team name)."""
    if team_id is None:
        template = await store.find_template(name.alias)
        if template is not None and not template.public:
            template = None
    else:
        template = await store.get_template(team_id, name.alias)
    if template is None or name.namespace is None:
        return template
    if template.team_id is None:
        return None  # the built-ins have no namespace
    owner = await store.get_team(template.team_id)
    return template if owner is not None and owner.name.lower() == name.namespace else None


async def _parent_build(store: Store, team_id: str | None, recipe: Recipe) -> Build | None:
    """The ready build `fromTemplate` names (its tag, else `default`); None without one."""
    if recipe.base.template is None:
        return None
    name = parse_name(recipe.base.template, what="fromTemplate")
    template = await _visible(store, team_id, name)
    if template is None:
        raise ApiError(404, f"template '{recipe.base.template}' not found")
    build = await store.tagged_build(template.template_id, name.tag_or_default)
    if build is None or build.artifact is None:
        raise ApiError(
            404,
            f"template '{recipe.base.template}' has no ready build"
            f" tagged '{name.tag_or_default}' to build from",
        )
    return build


def _artifact(build: Build | None) -> Artifact | None:
    return Artifact.from_json(build.artifact) if build is not None and build.artifact else None


def _recorded(recipe: Recipe, parent: Build | None) -> dict[str, Any]:
    """The recipe as its build keeps it, with the parent build it was built on: the same
    recipe over a rebuilt parent is a different template."""
    recorded = recipe.to_json()
    if parent is not None:
        recorded["parentBuildID"] = parent.build_id
    return recorded


def _same(stored: dict[str, Any] | None, recorded: dict[str, Any]) -> bool:
    return stored is not None and json.dumps(stored, sort_keys=True) == json.dumps(
        recorded, sort_keys=True
    )


def _check_resources(cpu_count: int | None, memory_mb: int | None) -> tuple[int, int]:
    """E2B's rules: 1 or an even number of CPUs up to the maximum; an even number of MiB
    of memory within the bounds."""
    cpu = DEFAULT_CPU_COUNT if cpu_count is None else cpu_count
    memory = DEFAULT_MEMORY_MB if memory_mb is None else memory_mb
    if cpu < 1:
        raise ApiError(400, f"CPU count must be at least 1 (got {cpu})")
    if cpu > MAX_CPU_COUNT:
        raise ApiError(400, f"CPU count must be at most {MAX_CPU_COUNT} (got {cpu})")
    if cpu > 1 and cpu % 2:
        raise ApiError(400, f"CPU count must be 1 or an even number (got {cpu})")
    if memory < MIN_MEMORY_MB:
        raise ApiError(400, f"memory must be at least {MIN_MEMORY_MB} MiB (got {memory})")
    if memory > MAX_MEMORY_MB:
        raise ApiError(400, f"memory must be at most {MAX_MEMORY_MB} MiB (got {memory})")
    if memory % 2:
        raise ApiError(400, f"memory must be an even number of MiB (got {memory})")
    return cpu, memory
