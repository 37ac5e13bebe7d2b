"""The shipped recipes and prompt files (and the toy world's prompt splits, by name): configs/ at the root of a clone, align/configs/ in an installed
wheel (setup.py copies it there), so `align demo` and `align config toy/grpo-demo.yaml` run from both."""

from __future__ import annotations

from pathlib import Path


def configs_dir() -> Path:
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def find_file(path: str | Path) -> Path | None:
    """`path` where it exists (from the working directory); else the shipped file it names relative to
    configs/, with or without that prefix (`toy/grpo-demo.yaml`, `configs/prompts/drawbench.txt`);
    else None."""
    path = Path(path)
    if path.is_file():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    if path.is_absolute() or not parts:
        return None
    shipped = configs_dir().joinpath(*parts)
    return shipped if shipped.is_file() else None


def recipe(name: str) -> Path:
    """A shipped recipe by its path under configs/, such as `toy/grpo-demo.yaml`."""
    path = configs_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"the shipped recipe {path} is missing; reinstall diffusion-align")
    return path


def load_prompts(split_or_file: str) -> list[str]:
    """A named split of the toy world (or the toy video world's, `video-<split>`), or a text file with one
    prompt per line (the shipped prompt files, configs/prompts/*.txt, are found from any directory)."""
    from rewards.toy_video import VIDEO_SPLITS, video_prompt_splits
    from rewards.toy_world import SPLITS, prompt_splits

    if split_or_file in SPLITS:
        return prompt_splits()[split_or_file]
    if split_or_file in VIDEO_SPLITS:  # the toy video world's: video-train, video-heldout, ...
        return video_prompt_splits()[split_or_file.removeprefix("video-")]
    path = find_file(split_or_file)
    if path is None:
        splits = ", ".join(SPLITS + VIDEO_SPLITS)
        raise ValueError(f"prompts {split_or_file!r}: neither a split ({splits}) nor a file of one prompt per line")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompt")
    return prompts
