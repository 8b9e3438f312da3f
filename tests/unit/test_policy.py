"""The egress policy: E2B's validation of allowOut, denyOut and rules, and their meaning."""

from __future__ import annotations

import ipaddress

import pytest

from hearth.node.network.policy import (
    DOMAINS_NEED_DENY_ALL,
    MAX_ADDRESS_RULES,
    OFFLINE,
    UNRESTRICTED,
    Egress,
    PolicyError,
)

ALL = "0.0.0.0/0"


@pytest.mark.parametrize(
    ("allow", "deny", "message"),
    [
        # infra's sandbox_network_update_test.go, rejected cases
        (None, ["example.com"], "invalid denied CIDR example.com"),
        (None, ["not-a-cidr"], "invalid denied CIDR not-a-cidr"),
        (None, [ALL, "example.com"], "invalid denied CIDR example.com"),
        (["google.com"], None, DOMAINS_NEED_DENY_ALL),
        (["google.com"], ["10.0.0.0/8"], DOMAINS_NEED_DENY_ALL),
        (["*.example.com"], None, DOMAINS_NEED_DENY_ALL),
        (["example.com", "8.8.8.8"], ["10.0.0.0/8"], DOMAINS_NEED_DENY_ALL),
        # not an address, not a name
        (["0.0.0.0"], None, "invalid allowed address 0.0.0.0"),
        (["300.1.1.1"], None, "invalid allowed address 300.1.1.1"),
        (["1.2.3.4/33"], None, "invalid allowed address 1.2.3.4/33"),
        (["bad name!"], [ALL], "invalid allowed address bad name!"),
        (["-x.com"], [ALL], "invalid allowed address -x.com"),
        (None, ["0.0.0.0"], "invalid denied CIDR 0.0.0.0"),
    ],
)
def test_what_e2b_refuses_is_refused_with_its_message(allow, deny, message) -> None:
    with pytest.raises(PolicyError) as refused:
        Egress.parse(allow, deny)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("allow", "deny"),
    [
        (None, None),
        (["8.8.8.8"], None),
        (["8.8.8.8"], ["10.0.0.0/8"]),
        (["8.8.0.0/16"], None),
        (None, [ALL]),
        (["8.8.8.8"], [ALL]),
        (["google.com"], [ALL]),
        (["*.example.com"], [ALL]),
        (["example.com", "8.8.8.8"], [ALL]),
        (None, ["10.0.0.0/8", "192.168.0.0/16"]),
        (["*"], [ALL]),
        (["2001:db8::/32"], None),
    ],
)
def test_what_e2b_accepts_is_accepted(allow, deny) -> None:
    Egress.parse(allow, deny)


def test_allow_takes_precedence_and_the_default_is_to_allow() -> None:
    policy = Egress.parse(["8.8.8.8"], ["1.1.1.1"])
    assert policy.allows_address("8.8.8.8")
    assert not policy.allows_address("1.1.1.1")
    assert policy.allows_address("9.9.9.9")
    through = Egress.parse(["1.1.1.1"], ["1.1.1.1"])
    assert through.allows_address("1.1.1.1")
    whitelist = Egress.parse(["1.1.1.0/24"], [ALL])
    assert whitelist.allows_address("1.1.1.200") and not whitelist.allows_address("8.8.8.8")


def test_domains_match_exactly_by_wildcard_and_without_case() -> None:
    policy = Egress.parse(["Google.COM", "*.example.com"], [ALL])
    assert policy.allows_name("google.com") and policy.allows_name("GOOGLE.com.")
    assert not policy.allows_name("www.google.com")
    assert policy.allows_name("a.example.com") and policy.allows_name("a.b.example.com")
    assert not policy.allows_name("example.com")  # a wildcard does not match the apex
    assert not policy.allows_name("badexample.com")
    assert Egress.parse(["*"], [ALL]).allows_name("anything.test")
    assert policy.proxied and not policy.web_proxied


def test_allow_internet_false_is_a_deny_of_everything_that_allowed_entries_pass() -> None:
    assert Egress.parse(allow_internet=False) == OFFLINE
    policy = Egress.parse(["8.8.8.8"], allow_internet=False)
    assert policy.allows_address("8.8.8.8") and not policy.allows_address("1.1.1.1")


def test_duplicates_are_folded_and_json_round_trips() -> None:
    policy = Egress.parse(
        [ALL, ALL, "8.8.8.8", "x.test"],
        [ALL],
        {"api.test": [{"transform": {"headers": {"X-Key": "v"}}}]},
    )
    assert policy.allow == (ipaddress.ip_network(ALL), ipaddress.ip_network("8.8.8.8/32"))
    assert Egress.from_json(policy.to_json()) == policy
    assert Egress.recorded(None, allow_internet=False) == OFFLINE
    assert Egress.recorded(None) == UNRESTRICTED


def test_transforms_are_per_host_and_checked() -> None:
    policy = Egress.parse(rules={"api.test:3000": [{"transform": {"headers": {"X-A": "1"}}}]})
    assert policy.headers_for("api.test") == {"X-A": "1"}
    assert policy.headers_for("other.test") == {}
    assert policy.web_proxied and not policy.proxied
    layered = Egress.parse(
        rules={
            "*.test": [{"transform": {"headers": {"X-A": "wide"}}}],
            "*.api.test": [{"transform": {"headers": {"X-B": "narrow"}}}],
            "v1.api.test": [{"transform": {"headers": {"X-C": "exact"}}}],
        }
    )
    assert layered.headers_for("v1.api.test") == {"X-C": "exact"}  # exact first, unmerged
    assert layered.headers_for("v2.api.test") == {"X-B": "narrow"}  # longest wildcard
    assert layered.headers_for("x.test") == {"X-A": "wide"}
    assert layered.headers_for("test") == {}
    bad = [
        ({"*": []}, "is not a valid domain name"),
        ({f"h{i}.test": [] for i in range(11)}, "at most 10 domains"),
        ({"": []}, "must not be empty"),
        ({"bad host!": []}, "is not a valid domain name"),
        ({"a.test": [{}, {}]}, "at most 1 transform rule"),
        ({"a.test": [{"transform": {"headers": {"Bad Name": "v"}}}]}, "must not contain CR"),
        ({"a.test": [{"transform": {"headers": {"X": "a\r\nb"}}}]}, "must not contain CR"),
        ({"a.test": [{"transform": {"headers": {"X": "v" * 2049}}}]}, "exceeds maximum"),
        ({"a.test": [{"transform": {"headers": {f"X{i}": "v" for i in range(21)}}}]}, "20"),
    ]
    for rules, message in bad:
        with pytest.raises(PolicyError, match=message):
            Egress.parse(rules=rules)


def test_address_lists_are_bounded() -> None:
    many = [f"8.8.{i // 256}.{i % 256}" for i in range(MAX_ADDRESS_RULES + 1)]
    with pytest.raises(PolicyError, match="at most"):
        Egress.parse(many)
    Egress.parse(many[:MAX_ADDRESS_RULES])
