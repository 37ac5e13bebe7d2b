"""What travels between a reward server (rewards/server.py) and its client (rewards/remote.py).

A request carries images, their prompts, one id per sample and the names of the rewards to compute, in
one of two bodies, never a pickle:

    application/x-safetensors   one safetensors file: tensor `images` [B, 3, H, W] (float32 in [0, 1],
                                lossless, the default; or uint8), and in its string metadata `ids`,
                                `prompts` and `rewards` as JSON lists
    application/json            {"ids": [...], "prompts": [...], "rewards": [...], "images": [base64
                                PNG, ...]}: 8 bits a channel, for clients that are not Python

A response is JSON: {"ids": [...], "scores": {reward: [value or null, ...]}}, in the request's id
order; null stands for a NaN or inf value. Every parse failure raises WireError with a message for the
client; the server answers it with a 4xx.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SAFETENSORS = "application/x-safetensors"
JSON = "application/json"
MAX_SIDE = 4096  # pixels: a larger image is refused before it is decoded


class WireError(ValueError):
    """A malformed request or response; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ScoreRequest:
    ids: list[str]
    prompts: list[str]
    rewards: list[str]
    images: torch.Tensor  # [B, 3, H, W] float32 in [0, 1]


def encode_request(request: ScoreRequest, encoding: str = "safetensors") -> tuple[bytes, str]:
    """(body, content type)."""
    if encoding == "png":
        from rewards.base import to_pil

        pictures = []
        for picture in to_pil(request.images):
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            pictures.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        fields = {"ids": request.ids, "prompts": request.prompts, "rewards": request.rewards}
        return json.dumps({**fields, "images": pictures}).encode(), JSON
    if encoding != "safetensors":
        raise ValueError(f"encoding must be safetensors or png, got {encoding!r}")
    from safetensors.torch import save

    metadata = {key: json.dumps(getattr(request, key)) for key in ("ids", "prompts", "rewards")}
    images = request.images.detach().to("cpu", torch.float32)
    if not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        # a decoder's channels-last output travels as [B, H, W, 3] and is viewed back the same way, so
        # the server's kernels sum in the order a local call would (and give the same last bits)
        metadata["layout"] = "channels_last"
        images = images.permute(0, 2, 3, 1)
    return save({"images": images.contiguous()}, metadata=metadata), SAFETENSORS


def _string_list(value, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise WireError(f"{key} must be a list of strings")
    return value


def _decode_png(text, index: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(text, str):
        raise WireError(f"images[{index}] must be a base64 PNG string")
    try:
        data = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(data)) as picture:
            if picture.format != "PNG":
                raise WireError(f"images[{index}] is {picture.format}, not PNG", 415)
            if max(picture.size) > MAX_SIDE:
                raise WireError(
                    f"images[{index}] is {picture.size[0]}x{picture.size[1]}, over {MAX_SIDE} px", 413
                )
            rgb = picture.convert("RGB")
    except (ValueError, UnidentifiedImageError, OSError) as error:
        if isinstance(error, WireError):
            raise
        raise WireError(f"images[{index}] is not a readable PNG ({type(error).__name__})") from None
    from rewards.base import from_pil

    return from_pil([rgb])[0]


def _json_request(body: bytes) -> tuple[dict, torch.Tensor]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WireError(f"malformed JSON: {error}") from None
    if not isinstance(data, dict):
        raise WireError("the JSON body must be an object with ids, prompts, rewards and images")
    pictures = data.get("images")
    if not isinstance(pictures, list) or not pictures:
        raise WireError("images must be a non-empty list of base64 PNG strings")
    images = [_decode_png(text, i) for i, text in enumerate(pictures)]
    if len({tuple(image.shape) for image in images}) > 1:
        raise WireError("every image of a request must have the same size")
    return data, torch.stack(images)


def _safetensors_request(body: bytes) -> tuple[dict, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        header = int.from_bytes(body[:8], "little") if len(body) >= 8 else -1
        if header <= 0 or header > len(body) - 8:
            raise WireError("not a safetensors body (bad header length)")
        metadata = json.loads(body[8 : 8 + header]).get("__metadata__") or {}
        tensors = load(body)
    except (SafetensorError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise WireError(f"not a readable safetensors body ({type(error).__name__})") from None
    if set(tensors) != {"images"}:
        raise WireError(f"the safetensors body must hold one tensor named images, got {sorted(tensors)}")
    images = tensors["images"].clone()  # own, aligned memory: kernels then sum as they would locally
    if metadata.get("layout") == "channels_last":
        if images.ndim != 4 or images.shape[3] != 3:
            raise WireError(f"channels_last images must have shape [B, H, W, 3], got {list(images.shape)}")
        images = images.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        images = images.float() / 255
    elif images.dtype != torch.float32:
        raise WireError(f"images must be float32 in [0, 1] or uint8, got {images.dtype}")
    try:
        data = {key: json.loads(metadata[key]) for key in ("ids", "prompts", "rewards")}
    except KeyError as missing:
        raise WireError(f"the safetensors metadata has no {missing.args[0]}") from None
    except json.JSONDecodeError:
        raise WireError("the safetensors metadata must hold ids, prompts and rewards as JSON lists") from None
    return data, images


def decode_request(body: bytes, content_type: str, max_images: int) -> ScoreRequest:
    """Parse and check a request body; WireError (with its HTTP status) for anything malformed."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == JSON:
        data, images = _json_request(body)
    elif kind == SAFETENSORS:
        data, images = _safetensors_request(body)
    else:
        raise WireError(
            f"content type {content_type or 'none'!r} is not accepted: send {SAFETENSORS} or {JSON}", 415
        )
    ids = _string_list(data.get("ids"), "ids")
    prompts = _string_list(data.get("prompts"), "prompts")
    rewards = _string_list(data.get("rewards"), "rewards")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise WireError(f"images must have shape [B, 3, H, W] with B >= 1, got {list(images.shape)}")
    if images.shape[0] > max_images:
        raise WireError(
            f"{images.shape[0]} images in one request; this server takes at most {max_images}", 413
        )
    if max(images.shape[2:]) > MAX_SIDE:
        raise WireError(f"images of {images.shape[3]}x{images.shape[2]} px, over {MAX_SIDE}", 413)
    if not (len(ids) == len(prompts) == images.shape[0]):
        raise WireError(f"{len(ids)} ids and {len(prompts)} prompts for {images.shape[0]} images")
    if len(set(ids)) != len(ids):
        raise WireError("sample ids must be distinct within a request")
    if not rewards or len(set(rewards)) != len(rewards):
        raise WireError("rewards must name at least one reward, each once")
    if not bool(torch.isfinite(images).all()) or float(images.min()) < 0 or float(images.max()) > 1:
        raise WireError("pixel values must be finite and lie in [0, 1]")
    return ScoreRequest(ids=ids, prompts=prompts, rewards=rewards, images=images)


def encode_response(ids: Sequence[str], scores: dict[str, torch.Tensor]) -> dict:
    def number(value: float):
        return value if math.isfinite(value) else None

    return {
        "ids": list(ids),
        "scores": {name: [number(v) for v in values.tolist()] for name, values in scores.items()},
    }


def decode_response(data, ids: Sequence[str], rewards: Sequence[str]) -> dict[str, torch.Tensor]:
    """{reward: [B] float32} in the order of `ids`; NaN where the server sent null. WireError when the
    response does not answer exactly these ids with exactly these rewards."""
    if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
        raise WireError("the response is not an object with ids and scores")
    answered = data.get("ids")
    if (
        not isinstance(answered, list)
        or sorted(map(str, answered)) != sorted(ids)
        or len(answered) != len(ids)
    ):
        raise WireError(f"the response answers {len(answered or [])} ids that are not the {len(ids)} sent")
    if sorted(data["scores"]) != sorted(rewards):
        raise WireError(
            f"the response scores {sorted(data['scores'])}, not the rewards asked for {sorted(rewards)}"
        )
    position = {sample: i for i, sample in enumerate(answered)}
    order = [position[sample] for sample in ids]
    values = {}
    for name in rewards:
        column = data["scores"][name]
        if not isinstance(column, list) or len(column) != len(ids):
            raise WireError(
                f"the response has {len(column) if isinstance(column, list) else 'no'} scores of {name} for {len(ids)} ids"
            )
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in column):
            raise WireError(f"the response's scores of {name} are not numbers")
        row = [math.nan if column[i] is None else float(column[i]) for i in order]
        values[name] = torch.tensor(row, dtype=torch.float32)
    return values
