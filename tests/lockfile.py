"""The lock (requirements/lock.txt, requirements/no-deps.txt) read against pyproject.toml's ranges and against
what is installed. Used by tests/test_lock.py, and by `make test-latest` to print what the newest releases
change (`python tests/lockfile.py --differences`)."""

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCKS = (ROOT / "requirements" / "lock.txt", ROOT / "requirements" / "no-deps.txt")
LOCKED_EXTRAS = ("dev", "ocr", "text", "serve", "cuda")  # what `make setup-dev` installs; `make setup` installs a subset


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """{package: version} of a compiled requirements file; raises on a line that is not an exact pin."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier or [None]
        if specifier is None or specifier.operator != "==":
            raise ValueError(f"{path.name}:{number}: {line!r} is not pinned to one version (name==version)")
        pins[canonical(requirement.name)] = specifier.version
    return pins


def project_requirements(extras=LOCKED_EXTRAS) -> list[Requirement]:
    """pyproject.toml's dependencies and the named extras' requirements, as written there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    lines += [line for path in LOCKS[1:] for line in _inputs(path.with_suffix(".in"))]
    return [Requirement(line) for line in lines]


def _inputs(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def disagreements(pins: dict[str, str], requirements: list[Requirement]) -> list[str]:
    """One line per requirement the pins leave out or pin outside its range."""
    problems = []
    for requirement in requirements:
        name = canonical(requirement.name)
        if name not in pins:
            problems.append(f"{requirement.name}: in pyproject.toml but not pinned by the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement.name}: the lock pins {pins[name]}, outside pyproject's {requirement}")
    return problems


def locked_pins() -> dict[str, str]:
    pins = {}
    for path in LOCKS:
        pins.update(read_pins(path))
    return pins


def installed_differences(pins: dict[str, str]) -> list[str]:
    """Each locked package whose installed version is another (or that is not installed)."""
    installed = {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    return [
        f"{name}: lock {version}, installed {installed.get(name, 'none')}"
        for name, version in sorted(pins.items())
        if installed.get(name) != version
    ]


if __name__ == "__main__":
    if sys.argv[1:] != ["--differences"]:
        sys.exit("usage: python tests/lockfile.py --differences")
    rows = installed_differences(locked_pins())
    print(f"{len(rows)} packages differ from the lock" + (":" if rows else ""))
    print("\n".join(f"  {row}" for row in rows))
