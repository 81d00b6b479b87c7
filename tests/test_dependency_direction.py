"""Dependencies point one way.

``peerwire`` imports no other package of the project; ``tracker`` may import ``peerwire`` (the
pieces every layer shares: ids, units, bencode, the cluster-secret MACs); ``dfget`` may import both;
``proxy`` may import ``dfget`` (and so, through it, the others). ``tools/`` is never imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"peerwire", "tracker", "dfget", "proxy", "tools", "bench", "tests"}
ALLOWED = {
    "peerwire": set(),
    "tracker": {"peerwire"},
    "dfget": {"peerwire", "tracker"},
    "proxy": {"dfget", "peerwire", "tracker"},
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_allowed_project_packages(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    violations = []
    for path in files:
        bad = (imported_top_levels(path) & PROJECT) - ALLOWED[package] - {package}
        if bad:
            violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "mod.py"
    bad.write_text("import os\nfrom dfget.download import x\nfrom . import sibling\n")
    assert imported_top_levels(bad) & PROJECT == {"dfget"}
