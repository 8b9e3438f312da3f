"""proxy: sandbox traffic. One listener routes each request to a sandbox's port (by the
`E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers or a `{port}-{id}.{domain}` Host) or to the
API, streaming both ways, with the error answers the E2B SDK understands; it serves
plain HTTP and TLS on the same port, told apart by each connection's first byte."""

from hearth.proxy._gateway import Gateway, SandboxDirectory, SandboxRoute, listen
from hearth.proxy._listener import Listener, TLSContexts
from hearth.proxy._traffic import ByteTally, Traffic

__all__ = [
    "ByteTally",
    "Gateway",
    "Listener",
    "SandboxDirectory",
    "SandboxRoute",
    "TLSContexts",
    "Traffic",
    "listen",
]
