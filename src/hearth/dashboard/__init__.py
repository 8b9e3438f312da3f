"""The web dashboard: a static front end over the API, served by the API's own app."""

from hearth.dashboard._mount import DASHBOARD_PATH, mount

__all__ = ["DASHBOARD_PATH", "mount"]
