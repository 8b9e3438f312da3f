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
    # State that must survive restarts: the SQLite database by default.
    data_dir: Path
    # SQLAlchemy URL of the store: SQLite (default, in data_dir) or PostgreSQL.
    database_url: str
    # Which runtime runs sandboxes: "auto" (microvm where the host has hardware
    # virtualization, else container), "microvm", "container" or "isolated".
    runtime: str = "auto"


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read Hearth's settings from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    cache_dir = env.get("HEARTH_CACHE_DIR") or str(Path.home() / ".cache" / "hearth")
    data_dir = Path(env.get("HEARTH_DATA_DIR") or "/var/lib/hearth").expanduser()
    database_url = env.get("HEARTH_DATABASE_URL") or f"sqlite+aiosqlite:///{data_dir}/hearth.db"
    return Settings(
        cache_dir=Path(cache_dir).expanduser(),
        data_dir=data_dir,
        database_url=database_url,
        runtime=(env.get("HEARTH_RUNTIME") or "auto").strip().lower(),
    )
