"""The first process of a container whose envd the node's zygote forks in: it waits.

Run as a script (`python -I -S pid1.py`) so it imports nothing but builtins. envd joins
the container later (envd/zygote.py) and becomes this process's only child; envd is its
own orphans' reaper (a child subreaper), so nothing else is ever re-parented here while
it lives. Once this process has no child left, envd is gone and so is the sandbox: it
exits, and the kernel ends whatever was still in the container, so that a sandbox never
lives on without its envd.
"""

import os
import signal


def main() -> None:
    # Blocked, SIGCHLD stays pending until sigwait takes it: no exit is missed between a
    # look at the children and the wait.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    had_child = False
    code = 0
    while True:
        try:
            while True:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                had_child = True
                code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            if had_child:
                os._exit(code if code >= 0 else 128 - code)
        signal.sigwait({signal.SIGCHLD})


if __name__ == "__main__":
    main()
