"""Run one `kaizen` command and SIGKILL it, with every process it started, at a named point.

    python -m tests.reliability.killpoint MODULE:ATTR NTH before|after -- kaizen-args...

The NTH call of MODULE.ATTR (a function, or Class.method) is wrapped so that just before or
just after it the whole process group dies with SIGKILL: no finally block, no atexit, no
flushing of anything but our own streams. That is what a node failure or the OOM killer does.
The wrapper is installed before flows/ is imported, because the Prefect tasks there capture
their functions at import time. Exit status 3 means the point was never reached.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def _owner(target: str):
    module, _, attr = target.partition(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def arm(target: str, nth: int, when: str) -> None:
    owner, name = _owner(target)
    real = getattr(owner, name)
    calls = 0

    @functools.wraps(real)
    def tripwire(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == nth and when == "before":
            _die()
        result = real(*args, **kwargs)
        if calls == nth and when == "after":
            _die()
        return result

    setattr(owner, name, tripwire)


def main(argv: list[str]) -> int:
    target, nth, when, dashes, *command = argv
    if dashes != "--" or when not in ("before", "after"):
        raise SystemExit(__doc__)
    from flows.cli import _workspace_arg
    from flows.cli import main as kaizen
    from tasks.runtime import set_runtime_defaults
    from tasks.workspace import Workspace

    assert "flows.pipeline" not in sys.modules, "arm before the flows capture their tasks"
    set_runtime_defaults(Workspace.at(_workspace_arg(command)).state)  # as kaizen does, before the imports
    arm(target, int(nth), when)
    kaizen(command)
    return 3  # the command finished: the kill point was never reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
