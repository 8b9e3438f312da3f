"""envd."""
