"""Hearth: a self-hosted, E2B-compatible sandbox server."""
