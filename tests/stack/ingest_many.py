"""One host's share of the concurrent ingest: `python -m tests.stack.ingest_many START_AT FILE...`.

The files are ingested one after another in this process (the other host does the same at the
same time), each through the CLI entry point, exactly as `kaizen ingest FILE` would; the last
line names the files refused (exit status 1 of the command)."""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    from flows.cli import main as kaizen

    start_at, files = float(argv[0]), argv[1:]
    time.sleep(max(0.0, start_at - time.time()))
    refused = [f for f in files if kaizen(["ingest", f]) != 0]
    print(f"refused: {json.dumps(refused)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
