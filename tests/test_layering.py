"""The architecture as a test: imports point down the layers of docs/architecture.md,
and the sans-IO parts import no I/O. Read from the source with `ast`; nothing is imported."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The sans-IO parts: whole folders, and single modules of folders that also do I/O.
PURE = ("wire/", "topology/", "identity/", "transport/session.py", "transport/admission.py",
        "pairing/protocol.py", "discovery/announcement.py", "discovery/peer_table.py")  # fmt: skip
# What they must not import, even through another exoquic module: the event
# loop, sockets, processes, the machine.
IO_MODULES = ("trio", "anyio", "asyncio", "socket", "selectors", "aioquic.asyncio",
              "subprocess", "psutil", "httpx")  # fmt: skip


@dataclass(frozen=True)
class Import:
    source: str  # the importing file, relative to the root
    line: int
    module: str  # the imported module, dotted ("exoquic.wire.cbor", "trio")

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.module}"


class Package:
    """The exoquic package under `root` (the repository, or a test's copy)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._imports: dict[Path, list[Import]] = {}

    def layers(self) -> dict[str, int]:
        """Each top-level name of exoquic/ ("cli", "wire", "defaults", "__init__")
        -> its layer in docs/architecture.md's first code block, 0 at the top."""
        text = (self.root / "docs" / "architecture.md").read_text(encoding="utf-8")
        order: dict[str, int] = {}
        for depth, line in enumerate(_block_entries(text.split("```")[1])):
            names = re.split(r"\s{2,}", line)[0]
            for name in names.split(","):
                order[name.strip().removesuffix("/").removesuffix(".py")] = depth
        return order

    def parts(self) -> set[str]:
        """The top-level modules and folders of exoquic/."""
        found = {p.stem for p in (self.root / "exoquic").glob("*.py")}
        found |= {p.parent.name for p in (self.root / "exoquic").glob("*/__init__.py")}
        return found

    def files(self, part: str = "") -> list[Path]:
        target = self.root / "exoquic" / part
        return sorted(target.rglob("*.py")) if target.is_dir() else [target]

    def module_file(self, module: str) -> Path | None:
        """The file of an exoquic module, or None if `module` names no module."""
        base = self.root.joinpath(*module.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def imports(self, path: Path) -> list[Import]:
        """Every import in the file at any depth (lazy imports in functions and
        TYPE_CHECKING blocks are dependencies too), relative ones resolved."""
        if path not in self._imports:
            self._imports[path] = list(self._find_imports(path))
        return self._imports[path]

    def _find_imports(self, path: Path) -> list[Import]:
        source = str(path.relative_to(self.root))
        package = ".".join(path.relative_to(self.root).parent.parts)
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), source)):
            if isinstance(node, ast.Import):
                found += [Import(source, node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0]
                    base = f"{anchor}.{base}".rstrip(".")
                for alias in node.names:
                    # `from exoquic.cli import pair` imports a module; `from exoquic
                    # import __version__` a name of the package.
                    submodule = f"{base}.{alias.name}"
                    is_module = base.startswith("exoquic") and self.module_file(submodule)
                    found.append(Import(source, node.lineno, submodule if is_module else base))
        return list(dict.fromkeys(found))  # `from m import a, b` is one import of m

    def upward_imports(self) -> list[str]:
        """Each import of a module from a layer above the importer's."""
        order = self.layers()
        problems = []
        for path in self.files():
            own = top_level(".".join(path.relative_to(self.root).with_suffix("").parts))
            for imp in self.imports(path):
                target = top_level(imp.module) if _is_exoquic(imp.module) else None
                if target is not None and order[target] < order[own]:
                    problems.append(f"{imp}: {target} is above {own}")
        return problems

    def io_imports(self, path: Path, seen: set[Path] | None = None) -> list[str]:
        """The I/O imports of `path` and of every exoquic module it imports, recursively."""
        seen = set() if seen is None else seen
        if path in seen:
            return []
        seen.add(path)
        problems = []
        for imp in self.imports(path):
            if _is_exoquic(imp.module):
                target = self.module_file(imp.module)
                assert target is not None, f"{imp}: no such module"
                problems += self.io_imports(target, seen)
            elif any(imp.module == m or imp.module.startswith(m + ".") for m in IO_MODULES):
                problems.append(str(imp))
        return problems


def _block_entries(block: str) -> list[str]:
    """The lines of the layer list that start an entry (not a description's continuation)."""
    return [line for line in block.splitlines() if line and not line[0].isspace()]


def _is_exoquic(module: str) -> bool:
    return module == "exoquic" or module.startswith("exoquic.")


def top_level(module: str) -> str:
    """`exoquic.wire.cbor` -> "wire"; the package itself (`exoquic.__init__`) -> "__init__"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_of_the_package_has_a_layer() -> None:
    package = Package(ROOT)
    named = set(package.layers())
    assert package.parts() - named == set(), "place these in docs/architecture.md's layers"
    assert named - package.parts() == set(), "docs/architecture.md names parts that do not exist"
    assert package.layers()["cli"] == 0


def test_imports_point_down_the_layers() -> None:
    assert Package(ROOT).upward_imports() == []


def test_the_sans_io_parts_import_no_io() -> None:
    package = Package(ROOT)
    files = [path for part in PURE for path in package.files(part)]
    assert len(files) > len(PURE)  # the folders were found
    assert sorted({problem for path in files for problem in package.io_imports(path)}) == []


def test_defaults_import_nothing() -> None:
    # Any module may import exoquic.defaults, the command line before anything else.
    package = Package(ROOT)
    imported = package.imports(ROOT / "exoquic" / "defaults.py")
    assert [imp.module for imp in imported] == ["__future__"]


# The checks themselves, on a copy of the layer list with a few bad modules.


@pytest.fixture
def bad_package(tmp_path: Path) -> Package:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "architecture.md").write_text(
        (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"), encoding="utf-8"
    )
    files = {
        "__init__.py": "",
        "wire/__init__.py": "",
        "wire/framing.py": "from exoquic.wire import cbor\nfrom . import cbor as again\n",
        "wire/cbor.py": "def late():\n    from exoquic.orchestration.node import Node\n",
        "topology/__init__.py": "from exoquic.topology.plan import Plan\n",
        "topology/plan.py": "from exoquic.models import shard\n",
        "models/__init__.py": "",
        "models/shard.py": "import socket\n",
        "orchestration/__init__.py": "",
        "orchestration/node.py": "import trio\nfrom exoquic import __version__, defaults\n",
        "defaults.py": "",
    }
    for name, text in files.items():
        path = tmp_path / "exoquic" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return Package(tmp_path)


def test_an_upward_import_is_caught_even_inside_a_function(bad_package: Package) -> None:
    assert bad_package.upward_imports() == [
        "exoquic/wire/cbor.py:2 imports exoquic.orchestration.node: orchestration is above wire"
    ]


def test_io_is_caught_through_other_modules(bad_package: Package) -> None:
    topology = bad_package.root / "exoquic" / "topology" / "__init__.py"
    assert bad_package.io_imports(topology) == ["exoquic/models/shard.py:1 imports socket"]
    wire = bad_package.root / "exoquic" / "wire" / "framing.py"
    assert bad_package.io_imports(wire) == ["exoquic/orchestration/node.py:1 imports trio"]
