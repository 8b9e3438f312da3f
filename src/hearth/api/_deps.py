"""What a route may ask for besides its parameters: the app's store, services and settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hearth.api._sandboxes import Sandboxes
from hearth.api._settings import ApiSettings
from hearth.api._snapshots import Snapshots
from hearth.api._templates import Templates
from hearth.store import Store


def _store(request: Request) -> Store:
    return request.app.state.store


def _sandboxes(request: Request) -> Sandboxes:
    return request.app.state.sandboxes


def _templates(request: Request) -> Templates:
    return request.app.state.templates


def _snapshots(request: Request) -> Snapshots:
    return request.app.state.snapshots


def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(_store)]
SandboxesDep = Annotated[Sandboxes, Depends(_sandboxes)]
SnapshotsDep = Annotated[Snapshots, Depends(_snapshots)]
TemplatesDep = Annotated[Templates, Depends(_templates)]
SettingsDep = Annotated[ApiSettings, Depends(_settings)]
