"""Hearth's settings: the one place that reads environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Values every part of Hearth may need, read once from the environment."""

    # Built artefacts that are expensive to make and safe to share between runs: root
    # filesystems, the envd bundle when there is no source checkout to build it in.
    cache_dir: Path


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read Hearth's settings from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    cache_dir = env.get("HEARTH_CACHE_DIR") or str(Path.home() / ".cache" / "hearth")
    return Settings(cache_dir=Path(cache_dir).expanduser())
