"""proxy: sandbox traffic. One listener routes each request to a sandbox's port (by the
`E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers or a `{port}-{id}.{domain}` Host) or to the
API, streaming both ways, with the error answers the E2B SDK understands."""

from hearth.proxy._gateway import Gateway, SandboxDirectory, SandboxRoute, listen

__all__ = ["Gateway", "SandboxDirectory", "SandboxRoute", "listen"]
