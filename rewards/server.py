"""A batched reward server: any registered rewards, scored for many clients (`align serve-rewards`).

Built on FastAPI + uvicorn. The batching is ours, in `Batcher`: requests wait at most `wait` seconds
for others that ask for the same rewards at the same image size, up to `max_batch` images, and the
batch is scored on one worker thread (the reward models run one batch at a time, on their own
device). LitServe batches too, but runs its model in worker processes of its own, which on a CPU host
holds every reward model twice; Ray Serve brings a cluster runtime. A plain ASGI app keeps the request
checks and the batch rule in sixty lines we test.

Endpoints: GET /health (the rewards served, their arguments and versions, counters), POST /score
(rewards/wire.py's bodies). Every malformed request gets a 4xx naming the problem; a request that
breaks a batch is rescored alone, so it fails alone. Bound to 127.0.0.1 unless told otherwise; with a
token, every request must carry `Authorization: Bearer TOKEN`.
"""

import asyncio
import hmac
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from rewards.base import NonFiniteReward, Reward, check_images
from rewards.wire import ScoreRequest, WireError, decode_request, encode_response


def score_request(rewards: dict[str, Reward], request: ScoreRequest) -> dict[str, torch.Tensor]:
    """{name: [B]} for the request's rewards; NaN and inf are passed on (the client refuses them)."""
    scores = {}
    with torch.no_grad():
        for name in request.rewards:
            try:
                scores[name] = rewards[name](request.images, request.prompts).detach().cpu()
            except NonFiniteReward as error:
                scores[name] = error.values.detach().cpu()
    return scores


@dataclass
class Pending:
    request: ScoreRequest
    future: asyncio.Future

    @property
    def key(self) -> tuple:
        return tuple(self.request.rewards), tuple(self.request.images.shape[1:])


@dataclass
class Batcher:
    """Dynamic batching: requests with the same rewards and image size are scored together."""

    rewards: dict[str, Reward]
    max_batch: int = 64  # images per batch; a larger request is scored alone
    wait: float = 0.005  # seconds a batch waits for more requests once its first one arrived
    delay: float = 0.0  # seconds added to every batch (to study overlap)
    counts: dict = field(default_factory=lambda: {"requests": 0, "batches": 0, "images": 0})

    def __post_init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()  # binds to the loop that first uses it
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewards")

    async def submit(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(request, future))
        return await future

    async def run(self) -> None:
        waiting: list[Pending] = []
        while True:
            if not waiting:
                waiting.append(await self.queue.get())
            batch, waiting = await self._gather(waiting)
            await self._score(batch)

    async def _gather(self, waiting: list[Pending]) -> tuple[list[Pending], list[Pending]]:
        """(the batch to score now, the requests left waiting) after at most `wait` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        key = waiting[0].key

        def size() -> int:
            return sum(p.request.images.shape[0] for p in waiting if p.key == key)

        while size() < self.max_batch and (left := deadline - loop.time()) > 0:
            try:
                waiting.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        batch, rest, images = [], [], 0
        for pending in waiting:
            count = pending.request.images.shape[0]
            if pending.key == key and (not batch or images + count <= self.max_batch):
                batch.append(pending)
                images += count
            else:
                rest.append(pending)
        return batch, rest

    async def _score(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        requests = [p.request for p in batch]
        merged = ScoreRequest(
            ids=[i for r in requests for i in r.ids],
            prompts=[p for r in requests for p in r.prompts],
            rewards=requests[0].rewards,
            images=torch.cat([r.images for r in requests]),
        )
        try:
            scores = await loop.run_in_executor(self.executor, self._run, merged)
        except Exception as error:  # the client gets it, the server stays up
            if len(batch) == 1:
                batch[0].future.set_exception(error)
            else:  # one request broke the batch: each is scored alone, so it fails alone
                for pending in batch:
                    await self._score([pending])
            return
        start = 0
        for pending in batch:
            stop = start + pending.request.images.shape[0]
            if not pending.future.done():
                pending.future.set_result({name: values[start:stop] for name, values in scores.items()})
            start = stop

    def _run(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        if self.delay:
            time.sleep(self.delay)
        scores = score_request(self.rewards, request)
        self.counts["batches"] += 1
        self.counts["images"] += request.images.shape[0]
        return scores


def _error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise WireError(f"the body is over this server's limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WireError(f"the body is over this server's limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(
    rewards: dict[str, Reward],
    *,
    token: str | None = None,
    max_batch: int = 64,
    wait: float = 0.005,
    delay: float = 0.0,
    max_request_images: int = 1024,
    max_body_bytes: int = 256 * 2**20,
    describe: dict | None = None,
):
    """The ASGI app serving `rewards` ({name: Reward}); `describe` adds to what /health reports."""
    from fastapi import FastAPI, Request

    batcher = Batcher(rewards, max_batch=max_batch, wait=wait, delay=delay)
    tasks = []

    async def lifespan(app):
        tasks.append(asyncio.create_task(batcher.run()))
        yield
        tasks[0].cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="diffusion-align rewards", lifespan=lifespan)
    app.state.batcher = batcher

    def authorised(request) -> bool:
        if not token:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    @app.get("/health")
    async def health(request: Request):
        if not authorised(request):
            return _error(401, "missing or wrong token: send Authorization: Bearer TOKEN")
        served = {
            name: {"differentiable": reward.differentiable, "class": type(reward).__name__}
            for name, reward in rewards.items()
        }
        for name, details in (describe or {}).get("rewards", {}).items():
            served.get(name, {}).update(details)
        extra = {k: v for k, v in (describe or {}).items() if k != "rewards"}
        return {"status": "ok", "rewards": served, "max_batch": max_batch, **batcher.counts, **extra}

    @app.post("/score")
    async def score(request: Request):
        if not authorised(request):
            return _error(401, "missing or wrong token: send Authorization: Bearer TOKEN")
        try:
            body = await _read_body(request, max_body_bytes)
            parsed = decode_request(body, request.headers.get("content-type", ""), max_request_images)
            unknown = [name for name in parsed.rewards if name not in rewards]
            if unknown:
                raise WireError(f"unknown reward {unknown[0]!r}; this server serves {sorted(rewards)}", 404)
            for name in parsed.rewards:
                check_images(parsed.images, parsed.prompts, name)
        except WireError as error:
            return _error(error.status, str(error))
        except ValueError as error:
            return _error(400, str(error))
        batcher.counts["requests"] += 1
        try:
            scores = await batcher.submit(parsed)
        except ValueError as error:
            return _error(400, f"the rewards refused these images: {error}")
        except Exception as error:  # reported, and the server stays up
            return _error(500, f"scoring failed: {type(error).__name__}: {error}")
        return encode_response(parsed.ids, scores)

    return app


def serve(app, host: str = "127.0.0.1", port: int = 8300, log_level: str = "warning") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)


def build_rewards(terms: Sequence[tuple[str, dict]], device: str = "cpu") -> dict[str, Reward]:
    """{name: Reward} for [(name, args)], each built once on `device`."""
    from rewards.base import build_reward

    names = [name for name, _ in terms]
    if len(set(names)) != len(names):
        raise ValueError("a reward is served once: give each --reward once")
    return {name: build_reward(name, **({"device": device} | args)) for name, args in terms}
