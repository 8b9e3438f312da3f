"""api: E2B's REST control plane (sandboxes, templates) over the store and a node."""

from hearth.api._app import create_app, live_sandboxes
from hearth.api._settings import ENVD_VERSION, ApiSettings

__all__ = ["ENVD_VERSION", "ApiSettings", "create_app", "live_sandboxes"]
