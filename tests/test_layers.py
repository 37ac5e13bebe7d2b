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


def module_imports() -> dict[str, set[str]]:
    """{module: project modules it imports}, every import statement counted (inside functions too).
    Importing a.b.c imports the packages a and a.b first, so those count as arrows too; a name
    imported from a package (`from a.b import c`) counts as the module a.b.c where one exists."""
    modules = {}
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {}
    for module, path in modules.items():
        # the packages a module sits in are imported before it: not an arrow of its own, unless named
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for name in names:
                target = known(name)
                if target is None:
                    continue
                pieces = target.split(".")
                found |= {".".join(pieces[:i]) for i in range(1, len(pieces))} - own_packages
                found.add(target)  # named: an arrow even to the module's own package (`import rewards`)
        edges[module] = {m for m in found if m in modules and m != module}
    return edges


def rings(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_another_in_a_ring():
    """No ring between modules anywhere in the project's packages, function-level imports included:
    registration goes through the catalogues (rewards/catalogue.py, align/catalogue.py), which no
    module they register imports."""
    edges = module_imports()
    assert "rewards.base" in edges["rewards.combine"] and "align.config" in edges["align.algorithms.base"]
    assert not rings(edges), rings(edges)


def test_the_ring_finder_finds_a_ring():
    assert rings({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert rings({"a": {"b"}, "b": set()}) == []


def test_modules_and_functions_stay_small_enough_to_read():
    """No library module over 400 lines; no function over 60 lines of code (its docstring not counted:
    samplers/rollout.py's rollout documents every argument of the one step loop in 28 lines)."""
    long_modules, long_functions = [], []
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > 400:
                long_modules.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    first = node.body[0]
                    docstring = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
                    start = first.end_lineno + 1 if docstring and len(node.body) > 1 else node.lineno
                    if node.end_lineno - start + 1 > 60:
                        long_functions.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert not long_modules and not long_functions, long_modules + long_functions


def test_algorithm_settings_are_data_that_import_only_the_schema():
    """Every algorithm's config lives in a module that imports nothing of the project but the schema
    (and the other settings modules), so a config is read and checked without torch or the algorithms."""
    settings = sorted((ROOT / "align" / "algorithms").glob("*_config.py")) + [ROOT / "align" / "text" / "settings.py"]
    allowed = {"align.schema"} | {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in settings}
    assert len(settings) >= 5
    for path in settings:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                assert node.module in allowed or node.module.split(".")[0] in {"dataclasses", "typing"}, (path, node.module)
            elif isinstance(node, ast.Import):
                assert all(alias.name in {"dataclasses", "typing"} for alias in node.names), path
