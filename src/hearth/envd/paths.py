"""Path rules shared by the process and filesystem services and /files."""

from __future__ import annotations

import os

from hearth.envd.users import User


def expand(path: str, user: User, default_workdir: str | None = None) -> str:
    """An absolute path: `~` is the user's home, relative paths start at the home, and
    an empty path is the default workdir (else the home)."""
    if not path:
        return default_workdir or user.home
    if path == "~":
        return user.home
    if path.startswith("~/"):
        path = os.path.join(user.home, path[2:])
    elif not path.startswith("/"):
        path = os.path.join(user.home, path)
    return os.path.normpath(path)
