"""The bodies of the gateway's own answers: JSON for programs, HTML for browsers."""

from __future__ import annotations

import html
import json

from hearth.proxy._routing import Refusal

_HTML = """<html>
<head><title>{title}</title></head>
<body>
<h1>{title}</h1>
<p>{message}</p>
</body>
</html>
"""


def looks_like_browser(user_agent: bytes) -> bool:
    # Every browser's User-Agent starts with "Mozilla/"; SDKs, curl and httpx do not.
    return user_agent.startswith(b"Mozilla/")


def render(refusal: Refusal, *, browser: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of `refusal` (the status is `refusal.status`)."""
    if refusal.plain:
        body = (refusal.message + "\n").encode()
        content_type = b"text/plain; charset=utf-8"
    elif browser and refusal.title:
        body = _HTML.format(
            title=html.escape(refusal.title), message=html.escape(refusal.message)
        ).encode()
        content_type = b"text/html; charset=utf-8"
    else:
        document = {**refusal.fields, "message": refusal.message, "code": refusal.status}
        body = json.dumps(document).encode()
        content_type = b"application/json; charset=utf-8"
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
    ]
    return headers, body
