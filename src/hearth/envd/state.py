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

    def accepts(self, token: str | None) -> bool:
        """True when no access token is set, or `token` is it; compared in constant time,
        so that how long a refusal takes tells nothing of the token."""
        if not self.access_token:
            return True
        import hmac  # here, not at import: envd's start time is the product's

        given = (token or "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self.access_token.encode("utf-8", "surrogateescape"))
