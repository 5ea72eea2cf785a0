"""Dependencies point down: storage/ imports nothing from service/ or handlers/, and nothing
above storage/ touches sqlite3 or aiosqlite (docs/STYLE: many small stores behind contracts)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(package: str, banned: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in banned)
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_storage_imports_nothing_from_service_or_handlers():
    assert offenders("storage", ("service", "handlers")) == {}


def test_nothing_above_storage_opens_a_sqlite_connection():
    assert offenders("service", ("sqlite3", "aiosqlite")) == {}
    assert offenders("handlers", ("sqlite3", "aiosqlite")) == {}


def test_service_and_handlers_reach_the_database_only_through_contracts():
    # storage/__init__.py open_database chooses the backend; nothing above names one.
    def backend_imports(package: str) -> dict[str, list[str]]:
        found = {}
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = sorted(m for m in imported_modules(path) if m.startswith("storage.sqlite"))
            if bad:
                found[str(path.relative_to(ROOT))] = bad
        return found

    assert backend_imports("service") == {}
    assert backend_imports("handlers") == {}


def test_the_layer_check_sees_an_import():
    # The check above would pass on a package it could not read: it reads this very file.
    assert "ast" in imported_modules(Path(__file__))
