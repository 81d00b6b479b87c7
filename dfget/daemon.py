"""Entry point of ``dfdaemon``. The node daemon is not built yet (issue #5)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("dfdaemon: not built yet (issue #5)", file=sys.stderr)
    return 2
