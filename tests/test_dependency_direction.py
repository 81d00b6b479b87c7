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


#: The sans-IO task core and its policies: events in, commands out, no I/O of their own.
TASK_CORE = (
    "peerwire/core.py",
    "peerwire/downloading.py",
    "peerwire/uploading.py",
    "peerwire/admission.py",
    "peerwire/membership.py",
    "peerwire/swarmlink.py",
    "peerwire/peerstate.py",
    "peerwire/commands.py",
    "peerwire/digests.py",
    "peerwire/session.py",
    "peerwire/scheduler.py",
    "peerwire/schedstate.py",
    "peerwire/endgame.py",
    "peerwire/picker.py",
    "peerwire/requests.py",
    "peerwire/choker.py",
    "peerwire/pipeline.py",
)
IO_MODULES = {"asyncio", "socket", "selectors", "threading", "uvloop", "concurrent"}


@pytest.mark.parametrize("module", TASK_CORE)
def test_the_task_core_imports_neither_asyncio_nor_socket(module: str) -> None:
    found = {name.split(".")[0] for name in imported_modules(ROOT / module)}
    assert not found & IO_MODULES, f"{module} imports {sorted(found & IO_MODULES)}"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


#: HTTP clients: the tracker never fetches a URL on anyone's behalf (SECURITY.md), so its
#: serving modules import none (dftop, which reads a tracker's /stats, is a client program).
HTTP_CLIENTS = {"aiohttp", "urllib.request", "http.client", "requests", "httpx"}
DFTOP_MODULES = {"top.py", "topview.py", "topconfig.py"}


def test_the_tracker_imports_no_http_client() -> None:
    serving = [p for p in sorted((ROOT / "tracker").glob("*.py")) if p.name not in DFTOP_MODULES]
    assert serving
    for path in serving:
        found = imported_modules(path)
        clients = {m for m in found if m in HTTP_CLIENTS or m.split(".")[0] in HTTP_CLIENTS}
        assert not clients, f"{path.relative_to(ROOT)} imports {sorted(clients)}"
