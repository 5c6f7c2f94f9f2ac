"""The packages' layering: ``shared`` below both daemons, the daemons independent of each other.

``rustci`` (the SDK and CLI) speaks HTTP and uses ``shared``; only ``rustci.local``, which launches the two
daemons for ``make run``, reads their settings classes.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("agent", "coordinator", "shared", "rustci")
# What each package may import from the others.
ALLOWED: dict[str, set[str]] = {
    "shared": set(),
    "agent": {"shared"},
    "coordinator": {"shared"},
    "rustci": {"shared"},
}
EXCEPTIONS = {("rustci/local.py", "agent"), ("rustci/local.py", "coordinator")}


def _imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def test_each_package_imports_only_what_its_layer_allows() -> None:
    violations = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            for imported in _imported_packages(path) - {package} - ALLOWED[package]:
                if (relative, imported) not in EXCEPTIONS:
                    violations.append(f"{relative} imports {imported}")
    assert not violations, "layering broken:\n" + "\n".join(violations)


def test_the_check_sees_imports() -> None:
    # Guard against a checker that silently finds nothing: the agent does import shared.
    assert "shared" in _imported_packages(REPO / "agent" / "daemon.py")
    assert {"agent", "coordinator"} <= _imported_packages(REPO / "rustci" / "local.py")
