"""Template request and response bodies, named as E2B's spec names them, in its field
names (camelCase), with every key the Python 2.63 parser requires (spec §2.4)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from hearth.api._limits import Int32, RequestBody
from hearth.api._names import MAX_TAGS
from hearth.store import Build
from hearth.store import BuildLogEntry as BuildLogRecord
from hearth.store import Template as TemplateRecord
from hearth.store import TemplateTag as TagRecord

BuildStatus = Literal["building", "waiting", "ready", "error"]
LogLevel = Literal["debug", "info", "warn", "error"]


def sparse() -> Any:
    """An optional answer field, left out when it has no value: the parser reads a
    present `null` as a value (and `isoparse(None)` crashes)."""
    return Field(None, exclude_if=_is_none)


def _is_none(value: object) -> bool:
    return value is None


# --- requests ---------------------------------------------------------------------------

# The free space a build may ask its sandboxes' filesystem for beyond the default: 1 TiB.
MAX_FREE_DISK_MB = 1 << 20
Tags = Annotated[list[str], Field(max_length=MAX_TAGS)]


class TemplateBuildRequestV3(RequestBody):
    name: str | None = Field(None, examples=["my-template:v1"])
    tags: Tags | None = None
    alias: str | None = None  # deprecated: `name`
    teamID: str | None = None  # deprecated: the key's team
    cpuCount: Int32 | None = None
    memoryMB: Int32 | None = None
    minFreeDiskMb: Annotated[int, Field(ge=0, le=MAX_FREE_DISK_MB)] | None = None


class TemplateStep(RequestBody):
    type: str
    args: list[str] = []
    filesHash: str | None = None
    force: bool = False
    forceUpload: bool | None = None


class TemplateBuildStartV2(RequestBody):
    fromImage: str | None = None
    fromTemplate: str | None = None
    fromImageRegistry: dict[str, Any] | None = None
    force: bool = False
    steps: list[TemplateStep] = []
    startCmd: str | None = None
    readyCmd: str | None = None


class TemplateUpdateRequest(RequestBody):
    public: bool | None = None


class AssignTemplateTagsRequest(RequestBody):
    target: str
    tags: Tags


class DeleteTemplateTagsRequest(RequestBody):
    name: str
    tags: Tags


# --- responses --------------------------------------------------------------------------


class TemplateRequestResponseV3(BaseModel):
    templateID: str
    buildID: str
    public: bool
    names: list[str]
    tags: list[str]
    aliases: list[str]

    @classmethod
    def of(cls, template: TemplateRecord, build: Build) -> TemplateRequestResponseV3:
        return cls(
            templateID=template.template_id,
            buildID=build.build_id,
            public=template.public,
            names=list(template.aliases),
            tags=list(build.tags),
            aliases=list(template.aliases),
        )


class TemplateBuildFileUpload(BaseModel):
    present: bool
    url: str | None = sparse()


class BuildLogEntry(BaseModel):
    timestamp: datetime
    level: LogLevel
    message: str
    step: str | None = sparse()

    @classmethod
    def of(cls, entry: BuildLogRecord) -> BuildLogEntry:
        return cls(
            timestamp=entry.timestamp,
            level=entry.level,
            message=entry.message,
            step=entry.step,
        )


class BuildStatusReason(BaseModel):
    message: str
    step: str | None = sparse()


class TemplateBuildInfo(BaseModel):
    templateID: str
    buildID: str
    status: BuildStatus
    logEntries: list[BuildLogEntry]
    # The same page as plain messages, for SDKs older than `logEntries`.
    logs: list[str]
    reason: BuildStatusReason | None = sparse()

    @classmethod
    def of(cls, build: Build, entries: list[BuildLogRecord]) -> TemplateBuildInfo:
        reason = None
        if build.status == "error":
            why = build.reason or {}
            reason = BuildStatusReason(
                message=str(why.get("message") or "the build failed"), step=why.get("step")
            )
        return cls(
            templateID=build.template_id,
            buildID=build.build_id,
            status=build.status,
            logEntries=[BuildLogEntry.of(e) for e in entries],
            logs=[e.message for e in entries],
            reason=reason,
        )


class TemplateBuildLogsResponse(BaseModel):
    logs: list[BuildLogEntry]


class Template(BaseModel):
    """`Template` of the OpenAPI spec (every field the Python parser pops is here); the
    build fields are its latest build's."""

    templateID: str
    buildID: str
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    public: bool
    aliases: list[str]
    names: list[str]
    createdAt: datetime
    updatedAt: datetime
    createdBy: None = None
    lastSpawnedAt: datetime | None
    spawnCount: int
    buildCount: int
    envdVersion: str
    buildStatus: BuildStatus

    @classmethod
    def fields_of(cls, t: TemplateRecord, latest: Build | None) -> dict[str, Any]:
        return {
            "templateID": t.template_id,
            # A template with no build yet (registered, never started) still needs one.
            "buildID": latest.build_id
            if latest
            else t.build_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"hearth:{t.template_id}")),
            "cpuCount": t.cpu_count,
            "memoryMB": t.memory_mb,
            "diskSizeMB": t.disk_size_mb,
            "public": t.public,
            "aliases": list(t.aliases),
            "names": list(t.aliases) or [t.template_id],
            "createdAt": t.created_at,
            "updatedAt": t.updated_at,
            "lastSpawnedAt": t.last_spawned_at,
            "spawnCount": t.spawn_count,
            "buildCount": t.build_count,
            "envdVersion": t.envd_version,
            "buildStatus": latest.status if latest else "waiting",
        }

    @classmethod
    def of(cls, t: TemplateRecord, latest: Build | None) -> Template:
        return cls(**cls.fields_of(t, latest))


class TemplateBuild(BaseModel):
    buildID: str
    status: BuildStatus
    createdAt: datetime
    updatedAt: datetime
    finishedAt: datetime | None = sparse()
    cpuCount: int
    memoryMB: int
    diskSizeMB: int | None = sparse()
    envdVersion: str | None = sparse()

    @classmethod
    def of(cls, build: Build) -> TemplateBuild:
        return cls(
            buildID=build.build_id,
            status=build.status,
            createdAt=build.created_at,
            updatedAt=build.updated_at,
            finishedAt=build.finished_at,
            cpuCount=build.cpu_count,
            memoryMB=build.memory_mb,
            diskSizeMB=build.disk_size_mb,
            envdVersion=build.envd_version,
        )


class TemplateWithBuilds(Template):
    builds: list[TemplateBuild]  # newest first


class TemplateUpdateResponse(BaseModel):
    names: list[str]


class AssignedTemplateTags(BaseModel):
    tags: list[str]
    buildID: str


class TemplateTag(BaseModel):
    tag: str
    buildID: str
    createdAt: datetime

    @classmethod
    def of(cls, tag: TagRecord) -> TemplateTag:
        return cls(tag=tag.tag, buildID=tag.build_id, createdAt=tag.created_at)


class TemplateAliasResponse(BaseModel):
    templateID: str
    public: bool
