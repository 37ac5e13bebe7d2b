"""Everything is in pyproject.toml but one step: the wheel carries configs/ (the recipes, prompt files and
the toy JSONL) as align/configs/, where align/recipes.py finds it; a clone reads configs/ in place."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RECIPE_FILES = ("*.yaml", "*.txt", "*.jsonl", "*.md")


class BuildWithRecipes(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        for pattern in RECIPE_FILES:
            for source in Path("configs").rglob(pattern):
                target = Path(self.build_lib, "align", source)
                self.mkpath(str(target.parent))
                self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildWithRecipes})
