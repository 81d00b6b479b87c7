"""Entry point of ``dftracker``. The tracker is not built yet (issue #3)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "dftracker: not built yet (issue #3); `make demo` runs the peerwire transfer",
        file=sys.stderr,
    )
    return 2
