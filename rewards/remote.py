"""Rewards scored by a reward server (`align serve-rewards`, rewards/server.py), over HTTP.

    {name: remote, args: {url: http://host:8300, rewards: [geneval, clip]}}   one term: their sum
                                                                             (or {geneval: 1.0, ...})
    {name: geneval, args: {remote: http://host:8300}}                          the term `geneval`, scored
                                                                             there (its values and its
                                                                             name as if local)

Black-box only: gradients do not cross the network. Every sample travels with an id and every answer
is matched back by id, so neither order nor the server's batching can mix samples up. A response that
does not answer exactly the ids and rewards asked for, or that holds NaN, becomes NaN values: the
training loop refuses that batch and counts it (skipped_steps), never trains on it. A server that is
slow or down is retried with backoff for `timeout` seconds in all; after that the run stops with
RewardServerUnavailable (one line naming the URL; the last checkpoint is intact, `--resume` goes on).
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
import warnings

import torch

from rewards.base import Reward, register_reward
from rewards.wire import ScoreRequest, WireError, decode_response, encode_request

TOKEN_VARIABLE = "ALIGN_REWARD_TOKEN"  # where the shared token is read from when args give none
RETRY_STATUSES = (502, 503, 504)  # a server restarting, or a proxy in front of one


class RewardServerUnavailable(ConnectionError):
    """The reward server did not answer within the retry budget."""


class RemoteClient:
    """Scores batches on one server: ids, retries with backoff, and the check of every answer."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        request_timeout: float = 60.0,
        encoding: str = "safetensors",
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward: url must start with http:// or https://, got {url!r}")
        if encoding not in ("safetensors", "png"):
            raise ValueError(f"remote reward: encoding must be safetensors or png, got {encoding!r}")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_VARIABLE)
        self.timeout, self.request_timeout, self.encoding = float(timeout), float(request_timeout), encoding
        self.session = uuid.uuid4().hex[:8]
        self.counter = itertools.count()
        self.refused = 0  # answers refused (wrong ids, wrong count, NaN): never trained on
        self.retries = 0
        self._served: dict | None = None
        self._client = None

    @property
    def _http(self):
        """One connection pool per client (kept alive between batches)."""
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.request_timeout)
        return self._client

    def _headers(self, content_type: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return headers | ({"Content-Type": content_type} if content_type else {})

    def _call(self, method: str, path: str, **kwargs):
        """The response of the first attempt that reaches the server; retried with backoff."""
        import httpx

        start, attempt, last = time.monotonic(), 0, ""
        while True:
            try:
                response = self._http.request(method, self.url + path, **kwargs)
                if response.status_code not in RETRY_STATUSES:
                    return response
                last = f"HTTP {response.status_code}"
            except httpx.TransportError as error:  # refused, reset, timed out
                last = f"{type(error).__name__}"
            waited = time.monotonic() - start
            if waited >= self.timeout:
                raise RewardServerUnavailable(
                    f"reward server {self.url} did not answer for {waited:.0f} s ({last}); start it "
                    "again, then continue the run with --resume"
                )
            self.retries += 1
            time.sleep(min(0.25 * 2**attempt, 5.0, max(self.timeout - waited, 0.01)))
            attempt += 1

    @staticmethod
    def _refusal(response) -> str:
        try:
            return response.json().get("error", response.text)
        except ValueError:
            return response.text[:200]

    def served(self) -> dict:
        """/health's {reward: details} (asked once)."""
        if self._served is None:
            response = self._call("GET", "/health", headers=self._headers())
            if response.status_code != 200:
                raise ValueError(
                    f"reward server {self.url}: HTTP {response.status_code}: {self._refusal(response)}"
                )
            self._served = response.json()["rewards"]
        return self._served

    def check(self, names) -> None:
        missing = [name for name in names if name not in self.served()]
        if missing:
            raise ValueError(
                f"reward server {self.url} does not serve {missing[0]!r} (it serves {sorted(self.served())}); "
                f"start it with --reward {missing[0]}"
            )

    def score(self, images: torch.Tensor, prompts: list[str], names: list[str]) -> dict[str, torch.Tensor]:
        """{name: [B]}; NaN rows for an answer that is refused."""
        ids = [f"{self.session}-{next(self.counter)}" for _ in prompts]
        body, content_type = encode_request(
            ScoreRequest(ids, list(prompts), list(names), images), self.encoding
        )
        response = self._call("POST", "/score", content=body, headers=self._headers(content_type))
        if response.status_code != 200:
            raise ValueError(
                f"reward server {self.url} refused the request: HTTP {response.status_code}: {self._refusal(response)}"
            )
        try:
            return decode_response(response.json(), ids, names)
        except (WireError, ValueError) as error:
            self.refused += 1
            warnings.warn(
                f"reward server {self.url}: answer refused ({error}); this batch is not trained on",
                stacklevel=2,
            )
            return {name: torch.full((len(ids),), float("nan")) for name in names}


CLIENT_ARGS = ("token", "timeout", "request_timeout", "encoding")


@register_reward(
    "remote",
    differentiable=False,
    weights="a reward server (align serve-rewards)",
    description="rewards scored on a server: args url, rewards (list, or {name: weight}), token, timeout, "
    "encoding (safetensors, lossless; png). Black-box: gradients do not cross the network",
)
class RemoteReward(Reward):
    def __init__(self, url: str, rewards=None, *, device="cpu", chunk_size: int = 256, **client_args):
        super().__init__(device="cpu", chunk_size=chunk_size)
        unknown = sorted(set(client_args) - set(CLIENT_ARGS))
        if unknown:
            raise ValueError(
                f"remote reward: unknown argument {unknown[0]!r}; a served reward's own arguments are "
                f"given to the server (align serve-rewards --reward-arg), here only url, rewards, {', '.join(CLIENT_ARGS)}"
            )
        if isinstance(rewards, str):
            rewards = [rewards]
        if not rewards:
            raise ValueError("remote reward: name the served rewards, e.g. rewards: [geneval]")
        self.weights = dict(rewards) if isinstance(rewards, dict) else dict.fromkeys(rewards, 1.0)
        self.client = RemoteClient(url, **client_args)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        names = list(self.weights)
        self.client.check(names)
        values = self.client.score(images, prompts, names)
        return sum(self.weights[name] * values[name] for name in names)
