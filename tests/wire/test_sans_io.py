"""wire/ and identity/ stay sans-IO: no trio, sockets or transport imports."""

import ast
from pathlib import Path

import pytest

import exoquic

PACKAGE = Path(exoquic.__file__).parent
FORBIDDEN = ("trio", "socket", "asyncio", "aioquic", "exoquic.transport", "exoquic.discovery")
FILES = sorted([*(PACKAGE / "wire").glob("*.py"), *(PACKAGE / "identity").glob("*.py")])


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_io_imports(path: Path) -> None:
    bad = [
        m for m in imported_modules(path) if any(m == f or m.startswith(f"{f}.") for f in FORBIDDEN)
    ]
    assert bad == []
