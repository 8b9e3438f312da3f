"""A sandbox's egress policy from its recorded network config, as the api checks it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hearth.api._errors import ApiError
from hearth.node.network.policy import Egress, PolicyError
from hearth.store import Sandbox


def egress_from(network: Mapping[str, Any] | None, allow_internet: bool) -> Egress:
    """The policy of a create's or update's `network` (camelCase, as sent); a 400 with
    E2B's message for a rule E2B refuses."""
    try:
        return Egress.from_network(network, allow_internet=allow_internet)
    except PolicyError as e:
        raise ApiError(400, str(e)) from None


def egress_of(sandbox: Sandbox) -> Egress:
    """The policy a recorded sandbox runs with."""
    return egress_from(sandbox.network, sandbox.allow_internet is not False)
