"""Entry point of ``dfget``. The download command is not built yet (issue #4)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "dfget: not built yet (issue #4); `make demo` runs the peerwire transfer", file=sys.stderr
    )
    return 2
