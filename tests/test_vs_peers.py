"""benchmarks/vs_peers.py from a clone alone: the peer-side scripts of benchmarks/peers build models
ours loads, and each case makes only the virtualenv of its own peer."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def vs_peers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import vs_peers

    return vs_peers


def test_each_case_makes_only_its_peers_virtualenv(vs_peers, monkeypatch, tmp_path):
    made, driven = [], []
    monkeypatch.setattr(vs_peers, "peer_python", lambda work, name: made.append(name) or f"{work}/{name}/python")
    monkeypatch.setattr(vs_peers, "drive", driven.append)
    for cases, expected in (
        (["ddpo", "alignprop-64"], ["trl-0.23"]),
        (["grpo-tiny"], ["trl-1.16"]),
        (["ddpo", "grpo-smollm2"], ["trl-0.23", "trl-1.16"]),
        (["flow-grpo"], []),
    ):
        made.clear()
        monkeypatch.setattr(sys, "argv", ["vs_peers.py", "--work", str(tmp_path), "--cases", *cases])
        vs_peers.main()
        assert made == expected, cases
    made.clear()
    monkeypatch.setattr(sys, "argv", ["vs_peers.py", "--work", str(tmp_path), "--cases", "ddpo", "--trl-python", "py"])
    vs_peers.main()
    assert made == [] and driven[-1].trl_python == "py"  # a given python is used as it is


def test_without_a_work_folder_it_says_so():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "vs_peers.py"), "--cases", "ddpo"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 2 and "give --work DIR" in done.stderr.strip().splitlines()[-1]


def test_every_peer_requirement_is_pinned():
    for name in ("trl-0.23.txt", "trl-1.16.txt"):
        lines = [line for line in (BENCHMARKS / "peers" / name).read_text().splitlines() if line and line[0] != "#"]
        assert lines and all("==" in line for line in lines), name


def test_ours_loads_the_models_the_peers_build(tmp_path, vs_peers):
    """The image peer's tiny SD-1.5 pipeline and the text peer's tiny Llama, built by their scripts (in
    this virtualenv: building needs only diffusers and transformers), load through our own loaders and
    run at the size the peers time (64 px; the peers' prompts tokenised to known words)."""
    from align.text.models import load_text_model
    from samplers.models import load_adapter

    for script, folder in (("trl_image.py", "sd"), ("trl_text.py", "llama")):
        command = [sys.executable, str(BENCHMARKS / "peers" / script), "--build-only", "--model-dir", str(tmp_path / folder)]
        subprocess.run(command, check=True, capture_output=True, timeout=300)
    adapter = load_adapter(str(tmp_path / "sd"))
    assert type(adapter).__name__ == "SDAdapter" and adapter.resolution == 64
    assert tuple(adapter.generate(vs_peers.IMAGE_PROMPTS[:1], [0], num_steps=2).shape) == (1, 3, 64, 64)
    model, tokenizer = load_text_model(str(tmp_path / "llama"))
    ids = tokenizer(vs_peers.TEXT_PROMPTS[0])["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == len(vs_peers.TEXT_PROMPTS[0].split())
