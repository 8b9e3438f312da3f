"""Acceptance tests: the real E2B SDKs against a real envd."""
