"""A clean install: the wheel, installed outside the clone, carries its recipes and runs the demo's entry
points (`align demo --help`, `align config RECIPE`, `align doctor toy`)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "README.md", "align", "rewards", "samplers", "gallery", "configs"]


def run(args: list[str], cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_the_installed_wheel_runs_outside_the_clone(tmp_path):
    source = tmp_path / "source"  # a copy, so no stale build/ of the clone leaks into the wheel
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = [*pip, "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."]
    assert "Deprecat" not in run(build, source)  # e.g. project.license as a table
    (wheel,) = (tmp_path / "dist").glob("diffusion_align-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("toy/grpo-demo.yaml", "prompts/drawbench.txt", "text/arithmetic-pairs.jsonl"):
        assert f"align/configs/{shipped}" in names
    run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1"}
    python = [sys.executable, "-c"]
    where = run([*python, "import align; print(align.__file__)"], elsewhere, env).strip().splitlines()[-1]
    assert Path(where).is_relative_to(tmp_path / "site")
    align = [sys.executable, "-m", "align.cli"]
    assert "--grpo-only" in run([*align, "demo", "--help"], elsewhere, env)
    assert "flow-grpo" in run([*align, "config", "toy/grpo-demo.yaml"], elsewhere, env)
    prompts = (
        "from align.recipes import load_prompts; print(len(load_prompts('configs/prompts/drawbench.txt')))"
    )
    assert int(run([*python, prompts], elsewhere, env).strip().splitlines()[-1]) > 0
    assert "4/4 checks passed" in run([*align, "doctor", "toy", "--steps", "2"], elsewhere, env)


def test_shipped_recipes_and_prompt_files_are_found_from_any_directory(tmp_path, monkeypatch, capsys):
    from align.cli import main
    from align.recipes import configs_dir, find_file, load_prompts

    assert configs_dir() == ROOT / "configs"  # a clone reads configs/ in place
    monkeypatch.chdir(tmp_path)
    assert find_file("toy/grpo-demo.yaml") == ROOT / "configs/toy/grpo-demo.yaml"
    assert find_file("configs/prompts/drawbench.txt") == ROOT / "configs/prompts/drawbench.txt"
    assert find_file("toy") is None and find_file("toy/missing.yaml") is None
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy/grpo-demo.yaml").write_text("model: {name: tiny:sd3}\n")
    assert find_file("toy/grpo-demo.yaml") == Path("toy/grpo-demo.yaml")  # the user's own file comes first
    assert load_prompts("configs/prompts/drawbench.txt")[0]
    assert main(["config", "sd3.5-medium/grpo-geneval.yaml"]) == 0
    assert "name: flow-grpo" in capsys.readouterr().out
