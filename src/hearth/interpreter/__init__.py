"""The code-interpreter server that runs inside a sandbox on port 49999 (spec §4).

It speaks E2B's code-interpreter protocol (`e2b-code-interpreter`, `@e2b/code-interpreter`)
and drives Jupyter kernels directly with jupyter_client: no Jupyter server in between.
It runs on the template's own python3 and imports only the standard library and
jupyter_client, so nothing of Hearth's host side may be imported from here.
"""
