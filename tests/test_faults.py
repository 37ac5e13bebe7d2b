"""Nothing lost under faults: each fault is injected into a real tiny run (tiny:sd3, four epochs).

kill -9 anywhere, a checkpoint write that crashes or finds the disk full, a damaged checkpoint, NaN in
a reward, the loss or the gradients, two runs in one directory, unsafe loading in the source.
"""

import ast
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pattern_reward  # noqa: F401  (registers test-pattern)
import pytest
import torch
import yaml
from pattern_reward import Pattern
from test_loop import assert_same_rng, stable, tiny_config

from align.algorithms.policy_gradient import PolicyGradient
from align.checkpoint import CheckpointError, load_state, nonfinite_values, save_state, verify_checkpoint
from align.cli import main
from align.config import config_from_data, config_to_data
from align.faults import LOCK_NAME, RunFault, run_lock
from align.loop import Run, plan_epoch, train
from align.runs import checkpoints, read_metrics
from rewards.base import REWARDS, register_reward

ROOT = Path(__file__).parent.parent


class NaNForPrompts(Pattern):
    """test-pattern, but NaN for the images of `nan_prompts`: a reward that fails on some samples."""

    def __init__(self, nan_prompts=(), **kwargs):
        super().__init__(**kwargs)
        self.nan_prompts = set(nan_prompts)

    def score(self, images, prompts):
        failed = torch.tensor([p in self.nan_prompts for p in prompts], device=images.device)
        return super().score(images, prompts).masked_fill(failed, float("nan"))


if "test-nan-pattern" not in REWARDS:
    register_reward("test-nan-pattern", differentiable=True, weights="none", description="test")(
        NaNForPrompts
    )


def fault_config(**train):
    """Four epochs, a checkpoint each, evaluations (of one prompt) at 0, 2 and 4, TensorBoard on; the
    reward draws from python's and numpy's streams, so a resume that restores them wrong shows."""
    config = tiny_config(num_epochs=4, eval_every=2, keep_checkpoints=2, **train)
    config.rewards.terms[0].name = "test-drawing-pattern"
    config.eval.max_prompts = 1
    config.logging.tensorboard = True
    return config


def write_config(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config_to_data(config)))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run that every faulted run must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("reference")
    config = fault_config()
    train(config, root / "run")
    return SimpleNamespace(config=config, file=write_config(config, root / "exp.yaml"), out=root / "run")


@pytest.fixture(scope="module")
def launched_reference(reference, tmp_path_factory):
    """The same uninterrupted run, launched as the killed runs are: a fresh process with their
    environment. The test process's math libraries may run other thread counts than a child, and
    then the last bits of a sum differ."""
    out = tmp_path_factory.mktemp("launched") / "run"
    finished = launch(reference.file, out)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return out


def assert_same_run(expected: Path, actual: Path) -> None:
    """Final weights, optimiser state and RNG equal bit for bit; each epoch logged once, alike;
    the same evaluations in summary.json."""
    a, b = load_state(checkpoints(expected)[-1]), load_state(checkpoints(actual)[-1])
    assert a["epoch"] == b["epoch"] == 4
    for name, tensor in a["trainable"].items():
        assert torch.equal(tensor, b["trainable"][name]), name
    for key, slots in a["optimizer"]["state"].items():
        for slot, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][key][slot]))
    assert_same_rng(a["rng"], b["rng"])
    assert [m["epoch"] for m in read_metrics(actual)] == [1, 2, 3, 4]
    assert [stable(m) for m in read_metrics(expected)] == [stable(m) for m in read_metrics(actual)]
    summary = json.loads((actual / "summary.json").read_text())
    assert summary == json.loads((expected / "summary.json").read_text())


def leftovers(run: Path) -> list[str]:
    """What a clean run directory must not hold: a lock, a staging directory, a temporary file."""
    hidden = [p for p in (*run.iterdir(), *(run / "checkpoints").iterdir()) if p.name.startswith(".")]
    return sorted(p.name for p in hidden)


# --- 1. kill -9 ------------------------------------------------------------------------------------

# Where each launch of `align train` kills itself (ALIGN_TEST_KILL_AT=phase:N, align.faults.kill_point):
# a kill anywhere between two writes leaves the disk as a kill at the nearest point before it, and these
# points sit between every pair of writes of a run (events, metrics, summary, checkpoint, pruning).
KILLS = [
    ("evaluated:1", "in the base evaluation: no checkpoint, so --resume starts the run over"),
    ("sampled:1", "epoch 1 sampled, not trained"),
    ("checkpoint:1", "epoch 1 logged, its checkpoint half written: a staging directory"),
    ("saved:1", "epoch 1's checkpoint in place"),
    ("step:1", "epoch 2 trained, not logged"),
    ("logged:1", "epoch 2 evaluated and logged (summary.json, metrics, events) after the checkpoint"),
    ("checkpoint:1", "epoch 2's checkpoint half written"),
    ("saved:2", "epochs 2 and 3 saved, the oldest checkpoint not yet pruned"),
    ("sampled:1", "epoch 4 sampled"),
    ("evaluated:1", "in the final evaluation"),
]


def launch(config_file: Path, out: Path, *arguments: str, kill_at: str | None = None):
    env = {
        **os.environ,
        # one thread, so no sum is split across threads: every launch adds in the same order, bit for bit
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MKL_DYNAMIC": "FALSE",
        "HF_HUB_OFFLINE": "1",
        "ALIGN_PLUGINS": "pattern_reward",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("ALIGN_TEST_KILL_AT", None)
    if kill_at is not None:
        env["ALIGN_TEST_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "align.cli", "train", str(config_file), "--out", str(out), *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_kill_nine_at_ten_points_then_resume_finishes_as_the_uninterrupted_run(
    tmp_path, reference, launched_reference
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    stale_warnings = 0
    for index, (point, situation) in enumerate(KILLS):
        killed = launch(reference.file, run, *(["--resume"] if index else []), kill_at=point)
        assert killed.returncode == -signal.SIGKILL, (point, situation, killed.stderr[-2000:])
        stale_warnings += "taking over the stale lock" in killed.stderr
        if point == "checkpoint:1":  # the half-written checkpoint is there, hidden from --resume
            assert any(p.name.startswith(".epoch-") for p in (run / "checkpoints").iterdir())
        if point == "logged:1":  # and a kill in the middle of a metrics line
            with open(run / "metrics.jsonl", "a") as handle:
                handle.write('{"epoch": 3, "rew')
    finished = launch(reference.file, run, "--resume")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert stale_warnings == len(KILLS) - 1 and "taking over the stale lock" in finished.stderr
    assert_same_run(launched_reference, run)
    assert [p.name for p in checkpoints(run)] == ["epoch-000003", "epoch-000004"]
    assert leftovers(run) == []
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rewards = events.Scalars("reward")  # what killed processes logged after their checkpoint is hidden
    assert [e.step for e in rewards] == [1, 2, 3, 4]
    assert [e.value for e in rewards] == pytest.approx([m["reward"] for m in read_metrics(run)], rel=1e-6)


# --- 2 and 3. a checkpoint write that fails; a damaged checkpoint -----------------------------------


def failing_save(fault: str, at: int):
    """save_state that, at its `at`-th call, writes the state, cuts the tensors file in half and fails."""
    calls = []

    def save(directory, state, name="state"):
        calls.append(directory)
        save_state(directory, state, name)
        if len(calls) == at:
            tensors = Path(directory) / f"{name}.safetensors"
            tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
            if fault == "crash":
                raise RuntimeError("the writer crashed")
            raise OSError(errno.ENOSPC, "No space left on device")

    return save


@pytest.mark.parametrize("fault", ["crash", "disk full"])
def test_a_failed_checkpoint_write_keeps_the_previous_one_and_resume_finishes_exactly(
    tmp_path, reference, monkeypatch, capsys, fault
):
    run = tmp_path / "run"
    monkeypatch.setattr("align.run_checkpoint.save_state", failing_save(fault, at=2))
    if fault == "crash":
        with pytest.raises(RuntimeError, match="the writer crashed"):
            train(reference.config, run)
    else:
        assert main(["train", str(reference.file), "--out", str(run)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert re.fullmatch(
            rf"error: disk full writing {re.escape(str(run))}: [\d.]+ MB free, about [\d.]+ MB needed; .*",
            line,
        )
    assert [p.name for p in checkpoints(run)] == ["epoch-000001"]
    verify_checkpoint(checkpoints(run)[0])  # the previous checkpoint, intact
    assert leftovers(run) == []  # no staging directory, and the lock released
    monkeypatch.undo()
    train(reference.config, run, resume=run)
    assert_same_run(reference.out, run)


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("truncate", r"state\.safetensors has \d+ bytes, \d+ were written"),
        ("garble", r"state\.json fails its checksum"),
    ],
)
def test_a_damaged_checkpoint_is_named_in_one_line_and_never_loaded(
    tmp_path, reference, capsys, damage, problem
):
    from align.runs import load_model

    run = tmp_path / "run"
    shutil.copytree(reference.out, run)
    latest = checkpoints(run)[-1]
    if damage == "truncate":
        tensors = latest / "state.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:-100])
    else:  # invalid JSON of the same size
        text = (latest / "state.json").read_text()
        (latest / "state.json").write_text(text[:-1] + "#")
    assert main(["train", str(reference.file), "--out", str(run), "--resume"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: checkpoint {latest} is corrupt") and re.search(problem, line), line
    with pytest.raises(CheckpointError, match=problem):
        load_model(str(run))  # a run directory loaded as a model: the same check


# --- 4. NaN and inf --------------------------------------------------------------------------------


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.fixture
def faulty_loss(monkeypatch):
    """{epoch (counted from 1, as in metrics.jsonl): "loss" | "gradient"}: that epoch's loss is NaN,
    or its gradients are."""
    faults, current = {}, {}
    train_epoch, loss = Run.train_epoch, PolicyGradient.loss

    def counted_epoch(self):
        current["epoch"] = self.epoch + 1
        return train_epoch(self)

    def faulty(self, batch, unit):
        value, stats = loss(self, batch, unit)
        kind = faults.get(current["epoch"])
        if kind == "loss":
            value = value * float("nan")
        elif kind == "gradient":
            value = NaNGradient.apply(value)
        return value, stats

    monkeypatch.setattr(Run, "train_epoch", counted_epoch)
    monkeypatch.setattr(PolicyGradient, "loss", faulty)
    return faults


def assert_no_nan_saved(run: Path) -> None:
    for checkpoint in checkpoints(run):
        assert nonfinite_values({k: v for k, v in load_state(checkpoint).items() if k != "summary"}) == []


def assert_weights_equal(a: Path, b: Path) -> None:
    first, second = load_state(a), load_state(b)
    assert all(torch.equal(t, second["trainable"][n]) for n, t in first["trainable"].items())


def test_a_nan_reward_skips_the_step_and_leaves_no_trace(tmp_path):
    """A reward NaN for one group of epoch 2: that update is skipped and counted; the other group is
    not trained on either, and neither DDPO's per-prompt statistics nor the running normaliser keep
    the NaN, so epochs 3 and 4 train as usual."""
    from align.recipes import load_prompts

    config = tiny_config(num_epochs=4)
    prompts = load_prompts(config.train.prompts)
    plans = [set(plan_epoch(prompts, config, epoch, 0, 1).prompts) for epoch in range(4)]
    failing = sorted(plans[1])[0]
    assert all(failing not in plan for i, plan in enumerate(plans) if i != 1)
    data = config_to_data(config)
    data["algorithm"] = {"name": "ddpo", "clip_range": 0.2, "advantage": {"tracker_min_count": 2}}
    data["rewards"] = {
        "terms": [{"name": "test-nan-pattern", "args": {"nan_prompts": [failing]}}],
        "normalise": "running",
    }
    train(config_from_data(data), tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["skipped_steps"] for r in records] == [0, 1, 0, 0]
    assert records[1]["skipped_by"] == {"reward": 1} and [r["step"] for r in records] == [1, 1, 2, 3]
    for record in (records[2], records[3]):
        assert all(v == v for v in (record["reward"], record["advantage_abs_mean"], record["policy_loss"]))
    first, second = checkpoints(tmp_path / "run")[:2]
    assert_weights_equal(first, second)
    assert_no_nan_saved(tmp_path / "run")  # the tracker's rewards and the normaliser's moments included


def test_nan_loss_and_gradient_steps_are_skipped_and_counted_by_source(tmp_path, faulty_loss):
    faulty_loss.update({2: "loss", 3: "gradient"})
    train(tiny_config(num_epochs=4, max_nonfinite_steps=3), tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r.get("skipped_by") for r in records] == [None, {"loss": 1}, {"gradient": 1}, None]
    assert [r["step"] for r in records] == [1, 1, 1, 2]
    found = checkpoints(tmp_path / "run")
    assert_weights_equal(found[0], found[2])
    assert_no_nan_saved(tmp_path / "run")


def test_too_many_nan_steps_in_a_row_stop_the_run_naming_the_source(tmp_path, faulty_loss, capsys):
    faulty_loss.update({2: "gradient", 3: "gradient", 4: "gradient"})
    config_file = write_config(tiny_config(num_epochs=4, max_nonfinite_steps=2), tmp_path / "exp.yaml")
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(run)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "error: stopped: 2 optimiser steps in a row skipped for a NaN or inf, the last in the gradient"
    )
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert [p.name for p in checkpoints(run)] == ["epoch-000001", "epoch-000002"]
    assert_no_nan_saved(run)
    assert leftovers(run) == []


def test_a_checkpoint_holding_a_nan_is_refused(tmp_path):
    run = Run(tiny_config(), tmp_path / "run")
    with torch.no_grad():
        run.policy.parameters()[0].view(-1)[0] = float("nan")
    with pytest.raises(RunFault, match=r"refusing to save .*epoch-000000: trainable\..* holds NaN or inf"):
        run.save_checkpoint()
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- 5. one run per directory ----------------------------------------------------------------------


def test_a_second_run_into_a_directory_in_use_is_refused_in_one_line(tmp_path, capsys):
    config_file = write_config(tiny_config(num_epochs=1), tmp_path / "exp.yaml")
    with run_lock(tmp_path / "run") as lock:  # as the first run holds it, before its first checkpoint
        shutil.copy(config_file, tmp_path / "run" / "config.yaml")
        for resume in ([], ["--resume"]):
            assert main(["train", str(config_file), "--out", str(tmp_path / "run"), *resume]) == 2
            (line,) = capsys.readouterr().err.strip().splitlines()
            assert re.fullmatch(
                rf"error: .*run is in use by another run \(pid {os.getpid()} on .*\); .*", line
            )
            assert json.loads(lock.read_text())["pid"] == os.getpid()  # the refused run leaves it alone
    assert not lock.exists()


def test_a_stale_lock_is_taken_over_with_a_warning_and_a_lock_elsewhere_is_respected(tmp_path, capsys):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": finished.pid, "host": socket.gethostname()}))
    with run_lock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    warning = f"warning: taking over the stale lock {lock}: pid {finished.pid} is no longer running"
    assert capsys.readouterr().err.strip() == warning
    assert not lock.exists()
    lock.write_text(json.dumps({"pid": finished.pid, "host": "another-machine"}))  # cannot be checked
    with pytest.raises(RunFault, match="in use by another run"), run_lock(tmp_path):
        pass
    lock.write_text("")  # a run between creating its lock and writing into it
    with pytest.raises(RunFault, match="its lock names no owner yet"), run_lock(tmp_path):
        pass
    with pytest.raises(RuntimeError), run_lock(tmp_path / "errors"):
        raise RuntimeError("the run failed")
    assert not (tmp_path / "errors" / LOCK_NAME).exists()


# --- 6. safe loading -------------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unsafe_loading(source: str) -> list[str]:
    """Lines that load with pickle: torch.load without weights_only=True, pickle-like modules,
    allow_pickle=True, and trust_remote_code given anything but False or a user's option."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            if any(name.split(".")[0] in PICKLE_MODULES for name in names):
                found.append(f"{node.lineno}: imports a pickle loader")
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        function = ast.unparse(node.func)
        weights_only = keywords.get("weights_only")
        if function == "torch.load" and not (
            isinstance(weights_only, ast.Constant) and weights_only.value is True
        ):
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        allow_pickle = keywords.get("allow_pickle")
        if allow_pickle is not None and not (
            isinstance(allow_pickle, ast.Constant) and allow_pickle.value is False
        ):
            found.append(f"{node.lineno}: allow_pickle")
        trust = keywords.get("trust_remote_code")
        user_option = trust is not None and "trust_remote_code" in ast.unparse(trust)
        if (
            trust is not None
            and not user_option
            and not (isinstance(trust, ast.Constant) and trust.value is False)
        ):
            found.append(f"{node.lineno}: trust_remote_code={ast.unparse(trust)}")
    return found


def test_weights_load_only_through_safetensors_or_weights_only_torch_load():
    bad = """
import pickle
from joblib import load
torch.load(path)
torch.load(path, weights_only=False)
numpy.load(path, allow_pickle=True)
AutoModel.from_pretrained(name, trust_remote_code=True)
"""
    good = """
torch.load(path, map_location="cpu", weights_only=True)
AutoModel.from_pretrained(name, trust_remote_code=False)
AutoModel.from_pretrained(name, trust_remote_code=args.trust_remote_code)
"""
    assert len(unsafe_loading(bad)) == 6 and unsafe_loading(good) == []
    problems = [
        f"{path.relative_to(ROOT)}:{line}"
        for folder in ("align", "rewards", "samplers", "gallery")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line in unsafe_loading(path.read_text())
    ]
    assert problems == []
