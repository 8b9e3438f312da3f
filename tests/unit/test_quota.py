"""The API's per-team limits: a team's own where set, the server's where not, and the
window of starts per second."""

from __future__ import annotations

import pytest

from hearth.api._errors import ApiError
from hearth.api._quota import Quota, StartWindow
from hearth.api._settings import ApiSettings
from hearth.store import TeamLimits

SETTINGS = ApiSettings(max_concurrent=100, max_vcpus=0, max_timeout=3600)


def test_a_teams_own_limits_win_and_unset_ones_are_the_servers() -> None:
    quota = Quota.of(TeamLimits(concurrent_sandboxes=0, vcpus=8, max_timeout=7200), SETTINGS)
    assert quota == Quota(concurrent=0, vcpus=8, memory_mb=0, starts_per_second=0, max_timeout=7200)
    assert Quota.of(TeamLimits(), SETTINGS).concurrent == 100


@pytest.mark.parametrize(
    ("count", "vcpus", "memory", "refused"),
    [
        (1, 4, 1024, None),
        (2, 4, 1024, "concurrent E2B sandboxes (2)"),
        (1, 5, 1024, "vCPUs of concurrent E2B sandboxes (4)"),
        (1, 4, 1025, "memory of concurrent E2B sandboxes (1024 MiB)"),
    ],
)
def test_check_refuses_what_does_not_fit_with_a_429(count, vcpus, memory, refused) -> None:
    quota = Quota(concurrent=2, vcpus=4, memory_mb=1024, starts_per_second=0, max_timeout=60)
    if refused is None:
        quota.check(count, vcpus, memory)
        return
    with pytest.raises(ApiError) as error:
        quota.check(count, vcpus, memory)
    assert error.value.status == 429 and refused in error.value.message


def test_zero_means_no_limit() -> None:
    Quota(concurrent=0, vcpus=0, memory_mb=0, starts_per_second=0, max_timeout=1).check(
        10**6, 10**6, 10**9
    )


def test_the_start_window_admits_n_per_second_per_team() -> None:
    now = [100.0]
    window = StartWindow(clock=lambda: now[0])
    window.admit("a", 2)
    window.admit("a", 2)
    with pytest.raises(ApiError) as error:
        window.admit("a", 2)
    assert (error.value.status, error.value.message) == (429, "Rate limit exceeded")
    assert error.value.headers["Retry-After"] == "1"
    window.admit("b", 2)  # another team has its own window
    now[0] += 0.5
    with pytest.raises(ApiError):
        window.admit("a", 2)
    now[0] += 0.5  # the first two are a second old: out of the window
    window.admit("a", 2)
    window.admit("a", 0)  # no limit: never refused
