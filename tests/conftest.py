"""Shared fixtures and helpers for the whole suite."""

from __future__ import annotations

import os
import shutil

import pytest


def require_program(name: str) -> str:
    """Path of a program the test runs for real.

    Missing: the test is skipped on a developer's machine but fails under ``CI=true``, so a CI
    run can never pass by silently testing less.
    """
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path is None:
        message = f"program {name!r} not found (make test installs it when run as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
