"""node/network: a network slot per sandbox (namespace, veth pair, address, rules)."""

from hearth.node.network.rules import RulesError, SlotRules
from hearth.node.network.slots import NetworkError, NetworkPool, NetworkSlot

__all__ = ["NetworkError", "NetworkPool", "NetworkSlot", "RulesError", "SlotRules"]
