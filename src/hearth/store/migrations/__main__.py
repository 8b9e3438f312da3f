"""`python -m hearth.store.migrations "message"`: write a migration for what `_tables`
changed (see `hearth.store._migrate`)."""

import sys

from hearth.store._migrate import new_revision

new_revision(" ".join(sys.argv[1:]) or "change")
