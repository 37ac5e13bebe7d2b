"""benchmarks/vs_peers.py asks for the peers' virtualenvs its chosen cases run, and no others."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "vs_peers.py"


def _refusal(*cases: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cases", *cases, "--peer-scripts", "peers", "--work", "work"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_each_case_needs_only_its_peers_python():
    ddpo = _refusal("ddpo", "alignprop-64")
    assert "--trl-python" in ddpo and "--trl-grpo-python" not in ddpo
    grpo = _refusal("grpo-tiny")
    assert "--trl-grpo-python" in grpo and "--trl-python" not in grpo.replace("--trl-grpo-python", "")
    both = _refusal("ddpo", "grpo-smollm2")
    assert "--trl-python, --trl-grpo-python" in both
