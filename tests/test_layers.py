"""The packages form layers whose imports point one way (docs/architecture.md):

    align -> gallery -> rewards, samplers -> plumbing

Every import statement counts, inside functions too: a lazy import is still an arrow."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "plumbing": set(),
    "samplers": {"plumbing"},
    "rewards": {"plumbing"},
    "gallery": {"rewards", "samplers", "plumbing"},
    "align": {"gallery", "rewards", "samplers", "plumbing"},
}


def imported_packages(path: Path) -> set[str]:
    """The project packages a file imports (absolute imports; the project uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; write it absolute so the layers stay visible"
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


def package_imports() -> dict[str, dict[str, set[str]]]:
    """{package: {file: packages it imports other than itself}}."""
    return {
        package: {
            str(path.relative_to(ROOT)): imported_packages(path) - {package}
            for path in sorted((ROOT / package).rglob("*.py"))
        }
        for package in ALLOWED
    }


def test_every_import_points_down_a_layer():
    wrong = [
        f"{file} imports {', '.join(sorted(found - ALLOWED[package]))}"
        for package, files in package_imports().items()
        for file, found in files.items()
        if found - ALLOWED[package]
    ]
    assert not wrong, "\n".join(wrong)


def test_rewards_and_samplers_know_neither_align_gallery_nor_each_other():
    imports = package_imports()
    for package in ("rewards", "samplers"):
        for file, found in imports[package].items():
            assert not found & {"align", "gallery", "rewards", "samplers"}, (file, found)


def test_no_cycle_between_packages():
    edges = {p: set().union(*files.values()) for p, files in package_imports().items()}

    def reaches(start: str, target: str, seen: frozenset = frozenset()) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in edges[start])

    cycles = [p for p in edges if reaches(p, p)]
    assert not cycles, {p: edges[p] for p in cycles}
    assert edges["align"] >= {"rewards", "samplers"}  # the walk sees real imports
