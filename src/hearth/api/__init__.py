"""api: E2B's REST control plane (sandboxes, templates) over the store and a node."""

from hearth.api._app import create_app, live_sandboxes, openapi_description
from hearth.api._builds import TemplateBuilds
from hearth.api._settings import ENVD_VERSION, ApiSettings
from hearth.api._templates import ensure_builtin, start_builtin

__all__ = [
    "ENVD_VERSION",
    "ApiSettings",
    "TemplateBuilds",
    "create_app",
    "ensure_builtin",
    "start_builtin",
    "live_sandboxes",
    "openapi_description",
]
