"""Fixtures shared by envd's unit tests: an account whose home is a temporary directory."""

import pytest

from hearth.envd.users import User

# Ids no real account on the test machine has, so chown results are unambiguous; the
# test modules that assert on ownership repeat them.
UID, GID = 4321, 4322


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def envd_user(home) -> User:
    return User("user", UID, GID, str(home), "/bin/bash", (GID,))
