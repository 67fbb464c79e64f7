"""``python -m nntrtool.bench --child SPEC``: one end-to-end conversion, run by the benchmark in
a child process so that its peak memory is its own."""

from __future__ import annotations

import json
import sys

from nntrtool.bench.end_to_end import child_main
from nntrtool.errors import NntrError


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--child":
        result = child_main(json.loads(argv[1]))
        print(json.dumps(result), flush=True)
        return 0
    print("usage: nntrtool bench (this module is the library behind it)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except NntrError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
