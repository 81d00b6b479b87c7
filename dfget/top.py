"""Entry point of ``dftop``. The swarm view is not built yet (issue #6)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("dftop: not built yet (issue #6)", file=sys.stderr)
    return 2
