"""Packages import downward only: models/ and the sandbox never import training/, evaluation/ or inference/."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package -> packages it must never import (at any place in its modules, lazy imports included)
FORBIDDEN = {"models": {"training", "evaluation", "inference"}, "sandbox": {"training", "evaluation", "inference", "models"},
             "reasoning": {"training", "evaluation", "inference"}, "data": {"training", "evaluation", "inference"}}


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_package_imports_upward():
    found = {f"{path.relative_to(ROOT)} imports {name}" for package, banned in FORBIDDEN.items()
             for path in (ROOT / package).glob("*.py") for name in imported(path) & banned}
    assert not found, sorted(found)
