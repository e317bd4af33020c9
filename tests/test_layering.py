"""Packages import downward only: every package of the repository sits on one floor of `FLOORS`, and each import
(at any place in its modules, lazy ones and type-only ones included) points to a lower floor; no two packages
import each other; no package imports a script (run_*.py, bench/, tests/)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bottom to top; packages on one floor do not import each other. The scripts (run_*.py, bench/) stand above all.
FLOORS = [
    ("sandbox", "common"),  # the sandbox; the cache folder and its atomic writer
    ("data",),  # problems
    ("reasoning",),  # the stages and prompts (of a `data.problems.Problem`)
    ("models",),  # the two wrappers and the model loading
    ("scoring",),  # what training and the evaluation both measure
    ("training",),
    ("inference",),  # (may read training's checkpoints)
    ("evaluation",),  # `python -m evaluation` and the curves: compares trained checkpoints
]
FLOOR = {package: level for level, floor in enumerate(FLOORS) for package in floor}
SCRIPTS = {path.stem for path in ROOT.glob("*.py")} | {"bench", "tests", "conftest"}


def packages() -> list[str]:
    """Every top-level package of the repository: a folder with an `__init__.py`."""
    return sorted(path.parent.name for path in ROOT.glob("*/__init__.py"))


def imported(path: Path) -> set[str]:
    """The top-level names `path` imports anywhere (inside functions and `if TYPE_CHECKING:` too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def package_imports() -> dict[str, dict[str, set[str]]]:
    """package -> other package or script it imports -> the files that import it."""
    found = {}
    for package in packages():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imported(path) - {package}:
                if name in FLOOR or name in SCRIPTS:
                    found.setdefault(package, {}).setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_package_has_a_floor():
    assert packages(), "no package found"
    assert set(packages()) == set(FLOOR), "place every package on one floor of FLOORS (and only packages that exist)"


def test_no_package_imports_upward_or_sideways():
    found = sorted(f"{', '.join(sorted(files))} ({package}, floor {FLOOR[package]}) imports {name}"
                   + (f" (floor {FLOOR[name]})" if name in FLOOR else " (a script)")
                   for package, names in package_imports().items() for name, files in names.items()
                   if name not in FLOOR or FLOOR[name] >= FLOOR[package])
    assert not found, found


def test_no_two_packages_import_each_other():
    imports = package_imports()
    cycles = sorted({tuple(sorted((a, b))) for a, names in imports.items() for b in names
                     if a in imports.get(b, {})})
    assert not cycles, cycles


def test_the_checks_see_imports(tmp_path):
    """The reader finds plain, from-, lazy and type-only imports, and skips relative ones."""
    source = tmp_path / "m.py"
    source.write_text("import a.b\nfrom c import d\nfrom . import e\nif False:\n    from f.g import h\n"
                      "def k():\n    import i\n")
    assert imported(source) == {"a", "c", "f", "i"}
