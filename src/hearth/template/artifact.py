"""What a build produces and every runtime takes: ordered layers plus the metadata a
sandbox needs (user, workdir, env, start and ready commands, envd version).

Layers are named by their cache keys, not paths: a node finds a key's directory in its
own layer store (`layers.LayerStore.path`), so the same artifact serves every node.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hearth.template.recipe import DEFAULT_USER, DEFAULT_WORKDIR


@dataclass(frozen=True)
class Artifact:
    layers: tuple[str, ...]  # layer keys, bottom first
    envd_version: str
    user: str = DEFAULT_USER
    workdir: str = DEFAULT_WORKDIR
    env: dict[str, str] = field(default_factory=dict)
    start_cmd: str | None = None
    ready_cmd: str | None = None
    # Whether the ready command was given (else E2B's default, which a create that
    # starts cold need not wait for: the build proved the start command comes up).
    ready_explicit: bool = False
    # A sandbox's state saved by the node that ran it (a microVM's disk, and with
    # `memory` its RAM and devices): creates restore it instead of booting the layers,
    # which stay to say what it was made of. None: the layers are the whole artifact
    # (a container snapshot adds a layer of the files it captured).
    saved: str | None = None
    memory: bool = False  # whether a create continues the captured processes

    @property
    def key(self) -> str:
        """Names the artifact's files (its saved state, else its top layer): what pools
        and template snapshots are keyed by."""
        return self.saved or self.layers[-1]

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"layers": list(self.layers)}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Artifact:
        fields: dict[str, Any] = json.loads(data) if isinstance(data, str) else data
        return cls(**{**fields, "layers": tuple(fields["layers"])})
