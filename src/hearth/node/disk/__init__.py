"""node/disk."""
