"""Fixtures of the network tests: the stand-in internet (`internet.py`).

`internet` is built once per session and removed at its end, with a check that nothing
of it stays on the host; `fresh_internet` is the same one with its counts, logs and DNS
records reset for the test that asks for it. Both need root (namespaces, veth pairs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from network.internet import Internet


@pytest.fixture(scope="session")
def internet() -> Iterator[Internet]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and veth pairs")
    net = Internet().start()
    try:
        yield net
    finally:
        net.close()
    left = net.leftovers()
    assert left == {}, f"the stand-in internet left this on the host: {left}"


@pytest.fixture
def fresh_internet(internet: Internet) -> Internet:
    internet.reset()
    return internet
