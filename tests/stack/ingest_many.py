"""One host's share of the concurrent ingest: `python -m tests.stack.ingest_many START_AT FILE...`.

The files are ingested one after another in this process (the other host does the same at the
same time), each through the CLI entry point, exactly as `kaizen ingest FILE` would."""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    from flows.cli import main as kaizen

    start_at, files = float(argv[0]), argv[1:]
    time.sleep(max(0.0, start_at - time.time()))
    failed = [f for f in files if kaizen(["ingest", f]) != 0]
    print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
