"""The everyday calls of one released `e2b` Python SDK against `hearth serve`.

Run by tests/sdk/test_releases.py with the interpreter of an environment that has that
release installed, and the E2B_* variables set. Written for every release since 1.5
(which creates with `Sandbox()` and has no pause); prints `RESULT <step> <json>` after
each step and exits non-zero at the first failure.
"""

import json
import sys
from importlib.metadata import version

from e2b import Sandbox


def result(step, value):
    print(f"RESULT {step} {json.dumps(value)}", flush=True)


def main():
    path = "/home/user/release.txt"
    content = f"from e2b {sys.argv[1]}"
    if hasattr(Sandbox, "create"):
        sbx = Sandbox.create("base", timeout=120)
    else:
        sbx = Sandbox(template="base", timeout=120)
    result("create", sbx.sandbox_id)
    try:
        result("run", sbx.commands.run("echo hello").stdout)
        sbx.files.write(path, content)
        result("read", sbx.files.read(path) == content)
        pause = getattr(sbx, "pause", None) or getattr(sbx, "beta_pause", None)
        if pause is None:
            result("pause", "absent")
        else:
            pause()
            result("pause", sbx.is_running())
        again = Sandbox.connect(sbx.sandbox_id)
        result("connect", again.sandbox_id == sbx.sandbox_id and again.is_running())
        result("reconnected", again.commands.run(f"cat {path}").stdout == content)
    finally:
        killed = sbx.kill()
    result("kill", [killed, sbx.is_running()])
    result("version", version("e2b"))


if __name__ == "__main__":
    main()
