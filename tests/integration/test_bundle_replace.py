"""Rebuilding the envd bundle does not pull it out from under a running envd."""

from __future__ import annotations

import http.client
import json
import os
import shutil

import pytest

from hearth.node.disk import cache
from hearth.node.guest.envd_bundle import ensure_bundle
from hearth.node.runtime.isolated import IsolatedEnvd

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: uid maps and mounts"),
]


def _list_dir(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"path": "/home/user"})
        conn.request(
            "POST",
            "/filesystem.Filesystem/ListDir",
            body,
            {"Content-Type": "application/json"},
        )
        return conn.getresponse().status
    finally:
        conn.close()


def test_replaced_bundle_survives_while_mounted(tmp_path):
    bundle = tmp_path / "envd-bundle"
    shutil.copytree(ensure_bundle(), bundle, symlinks=True)
    with IsolatedEnvd("busybox", bundle_dir=bundle) as envd:
        # A rebuild swaps a new directory in while envd has not yet imported the
        # filesystem service, which it loads on first use.
        fresh = tmp_path / "fresh"
        shutil.copytree(bundle, fresh, symlinks=True)
        cache._swap_in(fresh, bundle)
        assert _list_dir(envd.port) == 200
        assert list(tmp_path.glob(".envd-bundle.old-*")), "the mounted version was deleted"
    cache.prune_replaced(bundle)
    assert not list(tmp_path.glob(".envd-bundle.old-*")), "an unused version was kept"
