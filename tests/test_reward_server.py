"""Rewards as a service: the wire format, the batched server, remote rewards in a run, asynchronous
scoring, hostile requests and outages (rewards/wire.py, rewards/server.py, rewards/remote.py,
align/algorithms/scoring.py)."""

import base64
import contextlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pattern_reward  # noqa: F401  (registers test-pattern)
import pytest
import torch
from conftest import free_port
from PIL import Image
from safetensors.torch import save
from test_faults import NaNForPrompts  # noqa: F401  (registers test-nan-pattern)
from test_loop import metrics, stable, tiny_config

from align.algorithms.scoring import part_slices
from align.checkpoint import verify_checkpoint
from align.cli import main
from align.config import config_from_data, config_to_data
from align.loop import train
from align.runs import checkpoints
from rewards.base import NonFiniteReward, build_reward
from rewards.combine import RewardSet
from rewards.remote import RemoteClient, RewardServerUnavailable
from rewards.server import build_app
from rewards.wire import (
    JSON,
    SAFETENSORS,
    ScoreRequest,
    WireError,
    decode_request,
    decode_response,
    encode_request,
)

TESTS = Path(__file__).parent


def images(count: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def served(rewards: dict, **options):
    """The app serving `rewards` on a loopback port, in a thread of this process: (url, app)."""
    app = build_app(rewards, **options)
    with serving(app) as url:
        yield url, app


@contextlib.contextmanager
def serving(app):
    """Any ASGI app on a loopback port, in a thread of this process: its url."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class ServerProcess:
    """`align serve-rewards` in a process of its own, to be killed and restarted on one port."""

    def __init__(self, *args: str):
        self.port, self.args, self.process = free_port(), args, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        env = dict(os.environ, ALIGN_PLUGINS="pattern_reward", PYTHONPATH=str(TESTS))
        command = [sys.executable, "-m", "align.cli", "serve-rewards", "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            assert self.process.poll() is None, self.process.stderr.read().decode()
            time.sleep(0.2)
        raise AssertionError("the reward server did not start")

    def requests(self) -> int:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(self.url + "/health", timeout=1).json()["requests"]
        return -1

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


# --- the wire --------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["safetensors", "png"])
def test_a_request_travels_intact(encoding):
    sent = ScoreRequest(["a", "b"], ["one", "two"], ["test-pattern"], images(2))
    body, content_type = encode_request(sent, encoding)
    got = decode_request(body, content_type, max_images=8)
    assert (got.ids, got.prompts, got.rewards) == (sent.ids, sent.prompts, sent.rewards)
    if encoding == "safetensors":  # lossless
        assert torch.equal(got.images, sent.images)
    else:  # 8 bits a channel, rounded to nearest
        assert torch.equal(got.images, (sent.images * 255).round() / 255)


def test_a_response_is_matched_back_by_id_and_refused_unless_exact():
    data = {"ids": ["b", "a"], "scores": {"r": [2.0, None]}}
    values = decode_response(data, ["a", "b"], ["r"])
    assert values["r"][1] == 2.0 and torch.isnan(values["r"][0])  # reordered by id; null is NaN
    for wrong in (
        {"ids": ["a", "c"], "scores": {"r": [1.0, 2.0]}},  # an id not sent
        {"ids": ["a"], "scores": {"r": [1.0]}},  # too few
        {"ids": ["a", "b"], "scores": {"r": [1.0]}},  # too few scores
        {"ids": ["a", "b"], "scores": {"q": [1.0, 2.0]}},  # another reward
        {"ids": ["a", "b"], "scores": {"r": ["1", 2.0]}},  # not numbers
    ):
        with pytest.raises(WireError):
            decode_response(wrong, ["a", "b"], ["r"])


def test_parts_cover_the_batch_in_order():
    assert part_slices(8, 3) == [slice(0, 3), slice(3, 5), slice(5, 8)]
    assert part_slices(2, 4) == [slice(0, 1), slice(1, 2)]
    assert part_slices(5, 1) == [slice(0, 5)]


# --- the server ------------------------------------------------------------------------------------


def test_remote_scores_equal_local_ones_and_concurrent_requests_are_batched():
    local = build_reward("test-pattern")
    with served({"test-pattern": build_reward("test-pattern")}, wait=0.3, max_batch=64) as (url, app):
        remote = build_reward(f"test-pattern@{url}")
        batch = images(6, seed=1)
        assert torch.equal(remote(batch, ["p"] * 6), local(batch, ["p"] * 6))
        results = {}

        def one(i):  # eight clients, one image each, at once
            results[i] = build_reward(f"test-pattern@{url}")(images(1, seed=10 + i), ["p"])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        counts = app.state.batcher.counts
        assert counts["requests"] == 9 and counts["images"] == 14
        assert counts["batches"] < 9  # the eight one-image requests shared batches
        for i in range(8):  # and each got its own image's score back
            assert torch.equal(results[i], local(images(1, seed=10 + i), ["p"]))


def _png(picture: Image.Image, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format=kind)
    return base64.b64encode(buffer.getvalue()).decode()


def _hostile(url: str) -> list[tuple[str, dict]]:
    """(name, httpx.request kwargs) for requests the server must refuse with a 4xx."""
    good_png = _png(Image.new("RGB", (32, 32), (10, 20, 30)))
    fields = {"ids": ["a"], "prompts": ["p"], "rewards": ["test-pattern"]}
    auth = {"Authorization": "Bearer secret"}

    def as_json(body, headers=auth):
        return {"content": json.dumps(body).encode(), "headers": {"Content-Type": JSON, **headers}}

    def as_tensors(tensors, metadata=None):
        meta = {k: json.dumps(v) for k, v in fields.items()} if metadata is None else metadata
        return {"content": save(tensors, metadata=meta), "headers": {"Content-Type": SAFETENSORS, **auth}}

    good = images(1)
    return [
        ("no token", as_json({**fields, "images": [good_png]}, headers={})),
        ("wrong token", as_json({**fields, "images": [good_png]}, headers={"Authorization": "Bearer no"})),
        ("malformed JSON", {"content": b"{ids: [", "headers": {"Content-Type": JSON, **auth}}),
        ("JSON array", as_json([1, 2, 3])),
        ("no images", as_json(fields)),
        ("not base64", as_json({**fields, "images": ["%%%not base64%%%"]})),
        ("not an image", as_json({**fields, "images": [base64.b64encode(b"hello world").decode()]})),
        ("a JPEG", as_json({**fields, "images": [_png(Image.new("RGB", (32, 32)), "JPEG")]})),
        ("truncated PNG", as_json({**fields, "images": [good_png[: len(good_png) // 2]]})),
        ("oversized PNG", as_json({**fields, "images": [_png(Image.new("RGB", (4097, 1)))]})),
        (
            "two sizes",
            as_json(
                {
                    **fields,
                    "ids": ["a", "b"],
                    "prompts": ["p", "q"],
                    "images": [good_png, _png(Image.new("RGB", (16, 16)))],
                }
            ),
        ),
        ("ids short", as_json({**fields, "ids": [], "images": [good_png]})),
        (
            "duplicate ids",
            as_json({**fields, "ids": ["a", "a"], "prompts": ["p", "p"], "images": [good_png, good_png]}),
        ),
        ("prompts not strings", as_json({**fields, "prompts": [3], "images": [good_png]})),
        ("unknown reward", as_json({**fields, "rewards": ["nope"], "images": [good_png]})),
        ("no rewards", as_json({**fields, "rewards": [], "images": [good_png]})),
        ("plain text", {"content": b"hello", "headers": {"Content-Type": "text/plain", **auth}}),
        (
            "pickle type",
            {
                "content": pickle.dumps({"images": good}),
                "headers": {"Content-Type": "application/python-pickle", **auth},
            },
        ),
        (
            "pickle as safetensors",
            {"content": pickle.dumps({"images": good}), "headers": {"Content-Type": SAFETENSORS, **auth}},
        ),
        ("two tensors", as_tensors({"images": good, "extra": good.clone()})),
        ("float64", as_tensors({"images": good.double()})),
        ("out of range", as_tensors({"images": good * 3})),
        ("NaN pixels", as_tensors({"images": torch.full_like(good, float("nan"))})),
        ("one channel", as_tensors({"images": good[:, :1].contiguous()})),
        ("no metadata", as_tensors({"images": good}, metadata={})),
        (
            "too many images",
            as_tensors({"images": images(9)}, {k: json.dumps(v * 9) for k, v in fields.items()}),
        ),
        ("oversized body", {"content": b"x" * (2**20 + 1), "headers": {"Content-Type": SAFETENSORS, **auth}}),
    ]


def test_hostile_requests_get_a_4xx_and_the_server_stays_up():
    local = build_reward("test-pattern")
    options = {"token": "secret", "max_request_images": 8, "max_body_bytes": 2**20}
    with served({"test-pattern": build_reward("test-pattern")}, **options) as (url, app):
        hostile = _hostile(url)
        assert len(hostile) >= 20
        for name, request in hostile:
            response = httpx.post(url + "/score", **request)
            assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
            assert response.json()["error"], name  # the answer names the problem
        assert httpx.get(url + "/score").status_code == 405
        remote = build_reward(f"test-pattern@{url}", token="secret")
        assert torch.equal(remote(images(3), ["p"] * 3), local(images(3), ["p"] * 3))
        assert app.state.batcher.counts["requests"] == 1  # none of the hostile ones reached a reward


def test_a_wrong_answer_is_refused_never_trained_on():
    from fastapi import FastAPI

    lying = FastAPI()

    @lying.get("/health")
    def health():
        return {"rewards": {"test-pattern": {}}}

    @lying.post("/score")
    def score():
        return {"ids": ["someone-else"], "scores": {"test-pattern": [1.0]}}

    with serving(lying) as url:
        remote = build_reward(f"test-pattern@{url}")
        with pytest.warns(UserWarning, match="answer refused"), pytest.raises(NonFiniteReward):
            remote(images(1), ["p"])
        assert remote.client.refused == 1
        rewards = RewardSet([("test-pattern", 1.0, {"remote": url})])
        with pytest.warns(UserWarning, match="answer refused"):
            values = rewards.score(images(2), ["p", "q"])  # NaN values: the loop skips the step
        assert torch.isnan(values["test-pattern"]).all()


def test_a_nan_score_travels_as_null_and_is_refused():
    served_reward = build_reward("test-nan-pattern", nan_prompts=["bad"])
    with served({"test-nan-pattern": served_reward}) as (url, _):
        remote = build_reward(f"test-nan-pattern@{url}")
        with pytest.raises(NonFiniteReward) as caught:
            remote(images(2), ["good", "bad"])
        assert torch.isfinite(caught.value.values[0]) and torch.isnan(caught.value.values[1])


def test_remote_gradients_are_refused_with_the_reason(tmp_path):
    with served({"test-pattern": build_reward("test-pattern")}) as (url, _):
        data = config_to_data(tiny_config(num_epochs=1))
        data["algorithm"] = {"name": "draft"}
        data["rewards"]["terms"] = [{"name": "test-pattern", "args": {"remote": url}}]
        with pytest.raises(ValueError, match="remote gradients are not supported"):
            train(config_from_data(data), tmp_path / "run")


def test_a_client_gives_up_after_its_timeout_naming_the_url():
    client = RemoteClient(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    start = time.monotonic()
    with pytest.raises(
        RewardServerUnavailable, match=r"reward server http://127\.0\.0\.1:\d+ did not answer"
    ):
        client.score(images(1), ["p"], ["test-pattern"])
    assert 1.0 <= time.monotonic() - start < 10 and client.retries >= 2


# --- remote and asynchronous scoring in a run ---------------------------------------------------------


def run_config(url: str | None = None, **rewards):
    config = tiny_config(num_epochs=3)
    config.sampling.chunks = 2
    if url:
        config.rewards.terms[0].args = {"remote": url}
    for key, value in rewards.items():
        setattr(config.rewards, key, value)
    return config


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    train(run_config(), out)
    return [stable(record) for record in metrics(out)]


@pytest.mark.slow
def test_a_run_scored_remotely_or_asynchronously_equals_the_local_synchronous_one(tmp_path, local_run):
    with served({"test-pattern": build_reward("test-pattern")}) as (url, _):
        for name, config in {
            "local-async": run_config(asynchronous=True),
            "remote-sync": run_config(url),
            "remote-async": run_config(url, asynchronous=True),
        }.items():
            train(config, tmp_path / name)
            assert [stable(record) for record in metrics(tmp_path / name)] == local_run, name
    assert all(record["skipped_steps"] == 0 for record in local_run)


@pytest.mark.slow
def test_a_server_killed_and_restarted_in_time_leaves_the_run_unchanged(tmp_path, local_run):
    server = ServerProcess("--reward", "test-pattern").start()
    try:

        def outage():  # once the run has been scored twice, the server dies and is back 2 s later
            while server.requests() < 2:
                time.sleep(0.05)
            server.kill()
            time.sleep(2.0)
            server.start()

        watcher = threading.Thread(target=outage)
        watcher.start()
        train(run_config(server.url, remote_timeout=120.0), tmp_path / "run")
        watcher.join()
        assert [stable(record) for record in metrics(tmp_path / "run")] == local_run
    finally:
        server.kill()


@pytest.mark.slow
def test_a_server_that_stays_down_stops_the_run_with_one_line_and_resume_finishes(
    tmp_path, local_run, capsys
):
    import yaml

    server = ServerProcess("--reward", "test-pattern").start()
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(yaml.safe_dump(config_to_data(run_config(server.url, remote_timeout=3.0))))
    out = tmp_path / "run"

    def outage():  # the server dies once the run has saved its first checkpoint
        while not (out.exists() and checkpoints(out)):
            time.sleep(0.05)
        server.kill()

    watcher = threading.Thread(target=outage)
    watcher.start()
    code = main(["train", str(config_file), "--out", str(out)])
    watcher.join()
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error[-1].startswith("error: reward server " + server.url) and "--resume" in error[-1]
    saved = checkpoints(out)
    assert saved and len(metrics(out)) < 3  # stopped mid-run, its last checkpoint there
    verify_checkpoint(saved[-1])  # and whole
    server.start()
    try:
        assert main(["train", str(config_file), "--out", str(out), "--resume"]) == 0
        assert [stable(record) for record in metrics(out)] == local_run
    finally:
        server.kill()


def test_name_at_url_works_in_the_commands_as_a_local_reward_does(tmp_path, capsys):
    """align evaluate and align pairs with test-pattern@URL print and write what they do with test-pattern."""
    with served({"test-pattern": build_reward("test-pattern")}) as (url, app):
        outputs = {}
        for name in ("test-pattern", f"test-pattern@{url}"):
            common = ["--prompts", "heldout", "--max-prompts", "2"]
            assert (
                main(["evaluate", "tiny:sd3", *common, "--seeds", "1", "--steps", "2", "--reward", name]) == 0
            )
            evaluated = capsys.readouterr().out
            out = tmp_path / str(len(outputs))
            pairs = ["pairs", "tiny:sd3", *common, "--samples", "2", "--reward", name, "--out", str(out)]
            assert main(pairs) == 0
            capsys.readouterr()
            labelled = (
                (out / "pairs.jsonl").read_text().replace(name, "REWARD")
            )  # its source names the reward
            outputs[name] = (evaluated.replace(name, "REWARD"), labelled)
        assert outputs["test-pattern"] == outputs[f"test-pattern@{url}"]
        assert app.state.batcher.counts["images"] >= 6  # 2 evaluated, 4 labelled for pairs


def test_every_remote_form_takes_the_runs_remote_timeout_unless_its_term_sets_one():
    url = f"http://127.0.0.1:{free_port()}"  # nothing is asked of it: clients connect on first use
    rewards = RewardSet(
        [
            (f"test-pattern@{url}", 1.0, {}),
            ("test-drawing-pattern", 1.0, {"remote": url}),
            ("remote", 1.0, {"url": url, "rewards": ["test-nan-pattern"], "timeout": 3.0}),
        ],
        remote_timeout=7.0,
    )
    timeouts = {name: reward.client.timeout for name, reward in rewards.rewards.items()}
    assert timeouts == {f"test-pattern@{url}": 7.0, "test-drawing-pattern": 7.0, "remote": 3.0}
