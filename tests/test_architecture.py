"""The layout holds: import-linter's layer contracts (pyproject.toml), modules of at most 400 lines, imports
at the top of each module (except lazy optional dependencies and matplotlib), no `object`-typed fields."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lossfloor"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400
# Function-level imports of lossfloor modules allowed: figures (matplotlib at start-up costs ~0.5 s) and the
# diffusers adapter (an optional dependency).
LAZY = ("lossfloor.plots", "lossfloor.integrations.diffusers")


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent).with_suffix("")).replace("/", ".")


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and "KEPT" in done.stdout


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_module_is_at_most_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_package_imports_are_at_the_top(path):
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in tree.body:  # `if TYPE_CHECKING:` imports are for annotations only
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            top.update(map(id, node.body))
    late = [f"line {node.lineno}: {node.module}" for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and id(node) not in top and node.module
            and node.module.startswith("lossfloor") and not node.module.startswith(LAZY)]
    assert not late


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_field_is_typed_object(path):
    tree = ast.parse(path.read_text())
    bad = [f"line {node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
           and "object" in ast.unparse(node.annotation).replace("|", " ").split()]
    assert not bad
