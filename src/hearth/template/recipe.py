"""A template's recipe as data: where it starts, its steps, its start and ready commands.

The steps are exactly the E2B SDK's `steps[]` (spec §5.2): `{"type", "args", "filesHash"?,
"force"?}`, so a recipe round-trips through the build API unchanged and the built-in
templates are written in the same words as a user's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

STEP_TYPES = ("RUN", "COPY", "ENV", "WORKDIR", "USER")
# What `Template()` and `from_base_image()` send: Hearth's own `base` unless a mirror
# serves the image (see `builder.resolve_base`).
E2B_BASE_IMAGE = "e2bdev/base"
DEFAULT_USER = "user"
DEFAULT_WORKDIR = "/home/user"
# E2B's readiness defaults: `sleep 20` after a start command alone, nothing without one.
DEFAULT_READY_AFTER_START = "sleep 20"

RootKind = Literal["busybox", "debian"]


class RecipeError(ValueError):
    """The recipe is malformed; the message says which field and why."""


@dataclass(frozen=True)
class Step:
    type: str
    args: tuple[str, ...]
    files_hash: str | None = None
    force: bool = False

    def describe(self) -> str:
        """The step as a Dockerfile line, for logs and progress."""
        if self.type == "ENV":
            pairs = zip(self.args[::2], self.args[1::2], strict=False)
            return "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
        if self.type == "RUN" and len(self.args) > 1 and self.args[1]:
            return f"RUN (as {self.args[1]}) {self.args[0]}"
        return f"{self.type} {' '.join(a for a in self.args if a)}"

    def identity(self) -> dict[str, Any]:
        """What names the step's result in the layer cache (`force` does not)."""
        return {"type": self.type, "args": list(self.args), "filesHash": self.files_hash}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "args": list(self.args), "force": self.force}
        if self.files_hash:
            out["filesHash"] = self.files_hash
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], number: int) -> Step:
        kind = data.get("type")
        if kind not in STEP_TYPES:
            raise RecipeError(
                f"step {number}: unknown type {kind!r} (one of {', '.join(STEP_TYPES)})"
            )
        args = data.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise RecipeError(f"step {number}: args must be a list of strings")
        minimum = {"RUN": 1, "COPY": 2, "ENV": 2, "WORKDIR": 1, "USER": 1}[kind]
        if len(args) < minimum or (kind == "ENV" and len(args) % 2):
            wanted = "key/value pairs" if kind == "ENV" else f"{minimum} argument(s)"
            raise RecipeError(f"step {number}: {kind} needs {wanted}")
        files_hash = data.get("filesHash")
        if kind == "COPY" and not files_hash:
            raise RecipeError(f"step {number}: COPY needs a filesHash (upload the files first)")
        return cls(kind, tuple(args), files_hash, bool(data.get("force", False)))


@dataclass(frozen=True)
class Base:
    """Where a recipe starts: exactly one of an OCI image, a template, or a built-in root."""

    image: str | None = None
    registry: dict[str, str] | None = None  # `fromImageRegistry` (credentials; never logged)
    template: str | None = None
    root: RootKind | None = None

    def describe(self) -> str:
        if self.image:
            return f"FROM {self.image}"
        if self.template:
            return f"FROM template {self.template}"
        return f"FROM the built-in {self.root} root"


@dataclass(frozen=True)
class Recipe:
    base: Base
    steps: tuple[Step, ...] = ()
    start_cmd: str | None = None
    ready_cmd: str | None = None
    force: bool = False  # ignore the cache for every step
    cpu_count: int = 2
    memory_mb: int = 512
    # What a build step may write (the template's diskSizeMB); None: the node's own
    # bound for builds (built-in templates, which install more than a sandbox may).
    disk_mb: int | None = None
    # Built-in recipes may ask for files from the host's Hearth installation (the
    # interpreter server); users' files come as uploaded tars named by filesHash.
    host_files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The recipe as stored with its build (registry credentials left out)."""
        base = {k: v for k, v in asdict(self.base).items() if v is not None and k != "registry"}
        if self.base.registry:
            base["registryType"] = self.base.registry.get("type", "registry")
        return {
            "base": base,
            "steps": [s.to_json() for s in self.steps],
            "startCmd": self.start_cmd,
            "readyCmd": self.ready_cmd,
            "force": self.force,
            "cpuCount": self.cpu_count,
            "memoryMB": self.memory_mb,
            **({"diskSizeMB": self.disk_mb} if self.disk_mb is not None else {}),
            "hostFiles": self.host_files,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        base = data.get("base") or {}
        return cls(
            base=Base(
                image=base.get("image"), template=base.get("template"), root=base.get("root")
            ),
            steps=tuple(Step.from_json(s, i) for i, s in enumerate(data.get("steps") or [], 1)),
            start_cmd=data.get("startCmd"),
            ready_cmd=data.get("readyCmd"),
            force=bool(data.get("force")),
            cpu_count=int(data.get("cpuCount") or 2),
            memory_mb=int(data.get("memoryMB") or 512),
            disk_mb=int(data["diskSizeMB"]) if data.get("diskSizeMB") else None,
            host_files=dict(data.get("hostFiles") or {}),
        )

    @classmethod
    def from_build_request(
        cls, body: dict[str, Any], *, cpu_count: int, memory_mb: int, disk_mb: int | None = None
    ) -> Recipe:
        """The recipe of `POST /v2/templates/{id}/builds/{buildID}` (`TemplateBuildStartV2`).
        RecipeError for a body the SDK would not send."""
        image, template = body.get("fromImage"), body.get("fromTemplate")
        if bool(image) == bool(template):
            raise RecipeError("exactly one of fromImage and fromTemplate must be given")
        registry = body.get("fromImageRegistry")
        if registry is not None and not isinstance(registry, dict):
            raise RecipeError("fromImageRegistry must be an object")
        steps = body.get("steps") or []
        if not isinstance(steps, list):
            raise RecipeError("steps must be a list")
        return cls(
            base=Base(image=image or None, registry=registry, template=template or None),
            steps=tuple(Step.from_json(s, i) for i, s in enumerate(steps, 1)),
            start_cmd=body.get("startCmd") or None,
            ready_cmd=body.get("readyCmd") or None,
            force=bool(body.get("force", False)),
            cpu_count=cpu_count,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
        )
