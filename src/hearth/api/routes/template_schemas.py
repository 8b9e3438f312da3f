"""Template request and response bodies, in the spec's field names (camelCase), with
every key the Python 2.63 parser requires (spec §2.4)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from hearth.store import Build, BuildLogEntry, TemplateTag
from hearth.store import Template as TemplateRecord

BuildStatus = Literal["building", "waiting", "ready", "error"]
LogLevel = Literal["debug", "info", "warn", "error"]


class _Sparse(BaseModel):
    """Leaves out the optional fields it does not have: the parser reads a present
    `null` as a value (and `isoparse(None)` crashes)."""

    @model_serializer(mode="wrap")
    def _without_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


# --- requests ---------------------------------------------------------------------------


class TemplateBuildRequestV3(BaseModel):
    name: str | None = None
    tags: list[str] | None = None
    alias: str | None = None  # deprecated: `name`
    teamID: str | None = None  # deprecated: the key's team
    cpuCount: int | None = None
    memoryMB: int | None = None
    minFreeDiskMb: int | None = None


class TemplateStep(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    args: list[str] = []
    filesHash: str | None = None
    force: bool = False
    forceUpload: bool | None = None


class TemplateBuildStartV2(BaseModel):
    fromImage: str | None = None
    fromTemplate: str | None = None
    fromImageRegistry: dict[str, Any] | None = None
    force: bool = False
    steps: list[TemplateStep] = []
    startCmd: str | None = None
    readyCmd: str | None = None


class TemplateUpdateRequest(BaseModel):
    public: bool | None = None


class AssignTemplateTagsRequest(BaseModel):
    target: str
    tags: list[str]


class DeleteTemplateTagsRequest(BaseModel):
    name: str
    tags: list[str]


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


class TemplateBuildFileUpload(_Sparse):
    present: bool
    url: str | None = None


class BuildLogEntryOut(_Sparse):
    timestamp: datetime
    level: LogLevel
    message: str
    step: str | None = None

    @classmethod
    def of(cls, entry: BuildLogEntry) -> BuildLogEntryOut:
        return cls(
            timestamp=entry.timestamp,
            level=entry.level,  # type: ignore[arg-type]
            message=entry.message,
            step=entry.step,
        )


class BuildStatusReason(_Sparse):
    message: str
    step: str | None = None


class TemplateBuildInfo(_Sparse):
    templateID: str
    buildID: str
    status: BuildStatus
    logEntries: list[BuildLogEntryOut]
    # The same page as plain messages, for SDKs older than `logEntries`.
    logs: list[str]
    reason: BuildStatusReason | None = None

    @classmethod
    def of(cls, build: Build, entries: list[BuildLogEntry]) -> TemplateBuildInfo:
        reason = None
        if build.status == "error":
            why = build.reason or {}
            reason = BuildStatusReason(
                message=str(why.get("message") or "the build failed"), step=why.get("step")
            )
        return cls(
            templateID=build.template_id,
            buildID=build.build_id,
            status=build.status,  # type: ignore[arg-type]
            logEntries=[BuildLogEntryOut.of(e) for e in entries],
            logs=[e.message for e in entries],
            reason=reason,
        )


class TemplateBuildLogsResponse(BaseModel):
    logs: list[BuildLogEntryOut]


class TemplateOut(BaseModel):
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
    def of(cls, t: TemplateRecord, latest: Build | None) -> TemplateOut:
        return cls(**cls.fields_of(t, latest))


class TemplateBuildOut(_Sparse):
    buildID: str
    status: BuildStatus
    createdAt: datetime
    updatedAt: datetime
    finishedAt: datetime | None = None
    cpuCount: int
    memoryMB: int
    diskSizeMB: int | None = None
    envdVersion: str | None = None

    @classmethod
    def of(cls, build: Build) -> TemplateBuildOut:
        return cls(
            buildID=build.build_id,
            status=build.status,  # type: ignore[arg-type]
            createdAt=build.created_at,
            updatedAt=build.updated_at,
            finishedAt=build.finished_at,
            cpuCount=build.cpu_count,
            memoryMB=build.memory_mb,
            diskSizeMB=build.disk_size_mb,
            envdVersion=build.envd_version,
        )


class TemplateWithBuilds(TemplateOut):
    builds: list[TemplateBuildOut]  # newest first


class TemplateUpdateResponse(BaseModel):
    names: list[str]


class AssignedTemplateTags(BaseModel):
    tags: list[str]
    buildID: str


class TemplateTagOut(BaseModel):
    tag: str
    buildID: str
    createdAt: datetime

    @classmethod
    def of(cls, tag: TemplateTag) -> TemplateTagOut:
        return cls(tag=tag.tag, buildID=tag.build_id, createdAt=tag.created_at)


class TemplateAlias(BaseModel):
    templateID: str
    public: bool
