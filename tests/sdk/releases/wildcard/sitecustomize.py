"""On `PYTHONPATH` for a wildcard-domain run of a released SDK: `HEARTH_TEST_DOMAIN` and
every name under it resolve to 127.0.0.1, as a wildcard DNS record pointing at the
server would."""

import os
import socket

_DOMAIN = os.environ.get("HEARTH_TEST_DOMAIN")
_getaddrinfo = socket.getaddrinfo


def _resolve(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if _DOMAIN and isinstance(name, str) and (name == _DOMAIN or name.endswith("." + _DOMAIN)):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _resolve
