"""Fixtures for image pulls: a real registry on loopback and images pushed into it.

Nothing comes from the internet: images are made from the roots the project builds
(static busybox, Debian from debootstrap) and pushed to a local docker-registry.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.template.layers import LayerStore, root_layer
from template.registry import Registry, auth_available, push_directory

ROOT_ONLY = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: umoci keeps owners and device nodes"),
]
TOOLS = ("skopeo", "umoci", "/usr/bin/docker-registry")

BUSYBOX_ENV = {"HEARTH_IMAGE_TEST": "busybox", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
BUSYBOX_WORKDIR = "/home/user"
BUSYBOX_USER = "user"
BUSYBOX_CMD = ["/bin/sh", "-c", "echo hi"]
USERS = {"alice": "s3cret-pass"}


@dataclass(frozen=True)
class Pushed:
    name: str  # as a template names it, without the registry: library/busybox-hearth:1
    reference: str  # HOST:PORT/NAME:TAG
    digest: str


def built_root(kind: str) -> Path:
    """The built-in root `kind` ("busybox" or "debian") from the node's layer cache, built
    on first use (debian: debootstrap, a minute or two). Shared: read it, never write it."""
    store = LayerStore.of_cache()
    return store.path(root_layer(store, kind))


def _require_tools() -> None:
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/setup.sh installs them)")


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    _require_tools()
    with Registry() as running:
        yield running


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[Registry]:
    _require_tools()
    why = auth_available()
    if why:
        pytest.skip(f"no way to make a bcrypt htpasswd here: {why}")
    with Registry(users=USERS) as running:
        yield running


@pytest.fixture(scope="session")
def busybox_root() -> Path:
    return built_root("busybox")


@pytest.fixture(scope="session")
def busybox_image(registry: Registry, busybox_root: Path) -> Pushed:
    if os.geteuid() != 0:
        pytest.skip("needs root: pushing reads every file of the root, /root included")
    name = "library/busybox-hearth:1"
    digest = push_directory(
        busybox_root,
        registry.reference(name),
        env=BUSYBOX_ENV,
        workdir=BUSYBOX_WORKDIR,
        user=BUSYBOX_USER,
        cmd=BUSYBOX_CMD,
    )
    return Pushed(name, registry.reference(name), digest)
