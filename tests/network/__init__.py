"""Tests of network policy, and the stand-in internet they reach (`internet.py`)."""
