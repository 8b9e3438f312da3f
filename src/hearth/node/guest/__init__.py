"""node/guest."""
