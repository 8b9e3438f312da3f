"""What envd knows about its sandbox: set by POST /init, read by every handler."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class EnvdState:
    env_vars: dict[str, str] = field(default_factory=dict)
    access_token: str | None = None
    default_user: str = "user"
    default_workdir: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
