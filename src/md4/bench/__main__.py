"""``python -m md4.bench --one JOB``: one benchmark job in a process of its own (used by ``md4 bench``)."""

from __future__ import annotations

import argparse
import json

from md4.bench.suite import run_job


def main() -> None:
    """``python -m md4.bench --one JOB``: run one job (JSON) and print its result as one JSON line."""
    parser = argparse.ArgumentParser(description="One md4 bench job, in a process of its own (used by md4 bench).")
    parser.add_argument("--one", required=True, metavar="JOB", help="the job as JSON")
    result = run_job(json.loads(parser.parse_args().one))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
