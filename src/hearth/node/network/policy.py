"""A sandbox's egress policy: E2B's `allowOut`, `denyOut` and `rules`, parsed and checked.

One value says what a sandbox may reach; the api builds it from a create or an update
(refusing what E2B refuses, with E2B's messages), the store keeps its JSON, the slot's
kernel rules enforce its addresses and the egress proxy its domains and transforms.

E2B's semantics (infra's `sandbox_network_out_test.go`):
- everything is allowed unless denied; an allowed address passes even if also denied;
- domains can only be allowed, and only together with a deny of all traffic
  (`0.0.0.0/0`): they narrow a deny-all, never widen an allow-all;
- `*.x.com` matches the subdomains of x.com, not x.com itself; `*` matches any name;
  names match case-insensitively;
- `allow_internet_access=False` is a deny of all traffic;
- private, loopback and link-local ranges stay unreachable whatever the rules say (the
  slot's `blocked` set; see `rules.py`).
IPv6 entries are accepted as E2B accepts them, but slots are IPv4 only: every IPv6
packet is dropped, so an IPv6 allow opens nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ALL_TRAFFIC = "0.0.0.0/0"

# E2B's limits on transform rules (infra's sandbox_create.go), and one of ours on the
# address lists, which E2B does not bound: each entry is a set element in the kernel.
MAX_ADDRESS_RULES = 1000
MAX_RULE_DOMAINS = 10
MAX_TRANSFORMS_PER_DOMAIN = 1
MAX_DOMAIN_LENGTH = 128
MAX_HEADERS_PER_RULE = 20
MAX_HEADER_NAME_LENGTH = 64
MAX_HEADER_VALUE_LENGTH = 2048

DOMAINS_NEED_DENY_ALL = (
    "When specifying allowed domains in allow out, you must include 'ALL_TRAFFIC' in deny "
    "out to block all other traffic."
)

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """A rule E2B would refuse; the message is the one its api sends (a 400)."""


@dataclass(frozen=True)
class Egress:
    """What one sandbox may reach. The default value allows everything."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    domains: tuple[str, ...] = ()  # lower case, without a trailing dot; "*.x" and "*"
    # host pattern (as `domains`) -> headers set on the sandbox's HTTP requests to it
    transforms: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    # --- building -----------------------------------------------------------------------

    @classmethod
    def parse(
        cls,
        allow_out: Iterable[str] | None = None,
        deny_out: Iterable[str] | None = None,
        rules: Mapping[str, Any] | None = None,
        *,
        allow_internet: bool = True,
    ) -> Egress:
        """The policy of a create or update body; `PolicyError` for what E2B refuses."""
        allow_out, deny_out = list(allow_out or ()), list(deny_out or ())
        for name, entries in (("allow out", allow_out), ("deny out", deny_out)):
            if len(entries) > MAX_ADDRESS_RULES:
                raise PolicyError(f"Network {name} can have at most {MAX_ADDRESS_RULES} entries.")
        deny = []
        for entry in deny_out:
            net = _address(entry)
            if net is None:
                raise PolicyError(f"invalid denied CIDR {entry}")
            deny.append(net)
        allow, domains = [], []
        for entry in allow_out:
            net = _address(entry)
            if net is not None:
                allow.append(net)
            elif _is_address_like(entry):
                raise PolicyError(f"invalid allowed address {entry}")
            elif (domain := _domain(entry)) is not None:
                domains.append(domain)
            else:
                raise PolicyError(f"invalid allowed address {entry}")
        deny_all = ipaddress.ip_network(ALL_TRAFFIC)
        if domains and deny_all not in deny:
            raise PolicyError(DOMAINS_NEED_DENY_ALL)
        if not allow_internet and deny_all not in deny:
            deny.append(deny_all)
        return cls(
            allow=_unique(allow),
            deny=_unique(deny),
            domains=_unique(domains),
            transforms=_transforms(rules or {}),
        )

    @classmethod
    def from_network(cls, network: Mapping[str, Any] | None, *, allow_internet: bool = True):
        """The policy of a recorded `network` document (the create body's, camelCase)."""
        network = network or {}
        return cls.parse(
            network.get("allowOut"),
            network.get("denyOut"),
            network.get("rules"),
            allow_internet=allow_internet,
        )

    @classmethod
    def recorded(cls, data: Mapping[str, Any] | None, *, allow_internet: bool = True) -> Egress:
        """The policy a runtime's record keeps; records of versions before policies had
        only `allow_internet`."""
        if data is not None:
            return cls.from_json(data)
        return UNRESTRICTED if allow_internet else OFFLINE

    def to_json(self) -> dict[str, Any]:
        return {
            "allow": [str(n) for n in self.allow],
            "deny": [str(n) for n in self.deny],
            "domains": list(self.domains),
            "transforms": {host: dict(headers) for host, headers in self.transforms},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Egress:
        data = data or {}
        return cls(
            allow=tuple(ipaddress.ip_network(n) for n in data.get("allow", ())),
            deny=tuple(ipaddress.ip_network(n) for n in data.get("deny", ())),
            domains=tuple(data.get("domains", ())),
            transforms=tuple(
                (host, tuple(headers.items()))
                for host, headers in (data.get("transforms") or {}).items()
            ),
        )

    # --- what it means --------------------------------------------------------------------

    @property
    def ipv4_allow(self) -> tuple[ipaddress.IPv4Network, ...]:
        return tuple(n for n in self.allow if n.version == 4)

    @property
    def ipv4_deny(self) -> tuple[ipaddress.IPv4Network, ...]:
        return tuple(n for n in self.deny if n.version == 4)

    @property
    def proxied(self) -> bool:
        """Whether the egress proxy must see the sandbox's TCP connections (to check
        their names against `domains`)."""
        return bool(self.domains)

    @property
    def web_proxied(self) -> bool:
        """Whether the egress proxy must see the sandbox's HTTP(S) connections (ports 80
        and 443) to apply transforms, when it does not see them all anyway."""
        return bool(self.transforms) and not self.proxied

    def allows_address(self, address: str) -> bool:
        """The address rules' verdict on a destination (allow wins; the default is to
        allow). The blocked ranges are the slot's business, not the policy's."""
        ip = ipaddress.ip_address(address)
        if any(ip in n for n in self.allow):
            return True
        return not any(ip in n for n in self.deny)

    def allows_name(self, name: str) -> bool:
        """Whether a host name (SNI or Host) is one of the allowed domains."""
        return any(_matches(pattern, name) for pattern in self.domains)

    def headers_for(self, name: str) -> dict[str, str]:
        """The headers to set on an HTTP request to host `name` (empty: none): an exact
        rule's, else the longest matching wildcard's; rules are never merged (E2B's)."""
        found = [(p, h) for p, h in self.transforms if _matches(p, name)]
        if not found:
            return {}
        exact = [h for p, h in found if not p.startswith("*")]
        return dict(exact[0] if exact else max(found, key=lambda m: len(m[0]))[1])


UNRESTRICTED = Egress()
OFFLINE = Egress(deny=(ipaddress.ip_network(ALL_TRAFFIC),))  # allow_internet_access=False


def _address(entry: str) -> Network | None:
    """An IP or CIDR entry as a network; None if it is not one. Unspecified addresses
    (0.0.0.0, ::) are refused as E2B refuses them, except the all-traffic CIDR."""
    text = entry.strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if text != ALL_TRAFFIC and ipaddress.ip_address(text.split("/")[0]).is_unspecified:
        return None
    return net


def _is_address_like(entry: str) -> bool:
    return bool(re.fullmatch(r"[0-9.:/a-fA-F]+", entry)) and (
        "/" in entry or ":" in entry or entry.replace(".", "").isdigit()
    )


def _domain(entry: str) -> str | None:
    name = entry.strip().lower().rstrip(".")
    if name == "*":
        return name
    if not name or len(name) > 253 or not _DOMAIN.match(name):
        return None
    return name


def _matches(pattern: str, name: str) -> bool:
    name = name.lower().rstrip(".")
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def _unique(items: list) -> tuple:
    return tuple(dict.fromkeys(items))


def _transforms(rules: Mapping[str, Any]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """E2B's `rules`: `{host: [{transform: {headers: {...}}}]}`, checked as its api does."""
    if not isinstance(rules, Mapping):
        raise PolicyError("Network rules must be an object of domains.")
    if len(rules) > MAX_RULE_DOMAINS:
        raise PolicyError(f"Network rules can have at most {MAX_RULE_DOMAINS} domains.")
    found = []
    for host, entries in rules.items():
        if not host:
            raise PolicyError("Rule domain must not be empty.")
        if len(host) > MAX_DOMAIN_LENGTH:
            raise PolicyError(
                f"Rule domain {host!r} exceeds maximum length of {MAX_DOMAIN_LENGTH} characters."
            )
        pattern = _domain(host.split(":")[0]) if host.count(":") <= 1 else None
        if pattern is None or pattern == "*":
            raise PolicyError(f"Rule domain {host!r} is not a valid domain name.")
        entries = list(entries or ())
        if len(entries) > MAX_TRANSFORMS_PER_DOMAIN:
            raise PolicyError(
                f"Domain {host!r} can have at most {MAX_TRANSFORMS_PER_DOMAIN} transform rule."
            )
        headers: dict[str, str] = {}
        for entry in entries:
            transform = (entry or {}).get("transform") or {}
            headers.update(_headers(host, transform.get("headers") or {}))
        if headers:
            found.append((pattern, tuple(headers.items())))
    return tuple(found)


def _headers(host: str, headers: Mapping[str, Any]) -> dict[str, str]:
    if len(headers) > MAX_HEADERS_PER_RULE:
        raise PolicyError(
            f"Domain {host!r} can have at most {MAX_HEADERS_PER_RULE} headers per rule."
        )
    checked = {}
    for name, value in headers.items():
        value = str(value)
        if not name:
            raise PolicyError(f"Header name in rule for domain {host!r} must not be empty.")
        if not _HEADER_NAME.match(name):
            raise PolicyError(
                f"Header name {name!r} in rule for domain {host!r} must not contain CR or LF "
                "characters."
            )
        if len(name) > MAX_HEADER_NAME_LENGTH:
            raise PolicyError(
                f"Header name {name!r} in rule for domain {host!r} exceeds maximum length of "
                f"{MAX_HEADER_NAME_LENGTH} characters."
            )
        if "\r" in value or "\n" in value:
            raise PolicyError(
                f"Value for header {name!r} in rule for domain {host!r} must not contain CR or "
                "LF characters."
            )
        if len(value) > MAX_HEADER_VALUE_LENGTH:
            raise PolicyError(
                f"Value for header {name!r} in rule for domain {host!r} exceeds maximum length "
                f"of {MAX_HEADER_VALUE_LENGTH} characters."
            )
        checked[name] = value
    return checked
