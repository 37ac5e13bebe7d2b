"""`align plan`: the per-GPU memory of an image recipe before it runs, for each way to run it (DDP,
FSDP2, FSDP2 with CPU offload), and the cheapest way that fits.

Nothing is downloaded and no weight is read: the model is built on the meta device (the shipped large
models from their published architectures, samplers/skeletons.py; tiny and toy models and local
directories from their configs), with the recipe's LoRA, dtype, resolution and checkpointing. Counted:

  weights      every module a run holds: denoiser, text encoders, VAE, and the rewards' networks
  gradients    of the trainable weights
  optimiser    AdamW's two moments per trainable weight (8-bit AdamW: one byte each)
  EMA          one float32 copy of the trainable weights, unless train.ema_device is cpu
  rollouts     what an epoch keeps until it has trained: latents of every step, prompt encodings,
               decoded images
  working set  the largest of: one training micro-batch's forward and backward through the denoiser,
               one sampling part's forward (no graph), its decode. Traced, not modelled: the meta
               tensors of those very calls are counted as they live and die (align/memory.py)

FSDP2 divides the denoiser's weights, gradients, optimiser state and EMA by the GPUs and adds one
block gathered whole at a time; offload keeps those shards in host memory. The estimate is the
high-water mark of tensor memory (torch.cuda.max_memory_allocated's count); the allocator's caching
and the CUDA context (about 0.5-1 GB) come on top, and the table keeps that headroom.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from align.memory import LiveBytes, fused_attention_on_meta, held_modules, reward_modules
from align.sharding import wrap_units

GIB = 2**30
HEADROOM = 0.9  # of a GPU's memory the plan may fill: the allocator's caching and the CUDA context


@dataclass
class Footprint:
    """Bytes per GPU, by what holds them (the rows of `align plan`'s table)."""

    weights: int
    optimiser: int
    ema: int
    rollouts: int
    training: int  # activations and gradients of one micro-batch
    sampling: int  # one sampling part's forward, or its decode, whichever is larger

    @property
    def total(self) -> int:
        return self.weights + self.optimiser + self.ema + self.rollouts + max(self.training, self.sampling)


@dataclass
class Traced:
    """What the meta trace of a recipe found: bytes, whatever the number of GPUs."""

    denoiser: int  # the denoiser's weights (frozen and trainable)
    largest_block: int  # the denoiser's largest repeated block (FSDP2 gathers one at a time)
    other: int  # every other module's weights: text encoders, VAE, rewards
    trainable: int  # trainable weights
    trainable_numel: int
    rollouts: int
    training: int  # above the weights: one micro-batch forward + backward, gradients left out
    reference: int  # of which the KL reference's forward on the micro-batch (no graph), if it runs
    sampling: int  # above the weights: one sampling part's forward, no graph
    decoding: int  # above the weights: one sampling part's decode
    rewards: int  # the rewards' networks
    unknown_rewards: list[str]  # rewards whose networks could not be counted here
    graph: int  # the sampling graph kept for the first pass (rollout_graph_mb), on one process only


def meta_adapter(config):
    """The recipe's adapter and policy, built on the meta device."""
    from align.policy import ImagePolicy
    from samplers.models import adapter_class, detect_family, load_pipeline
    from samplers.skeletons import skeleton

    model = config.model
    dtype = getattr(torch, model.dtype)
    found = skeleton(model.name)
    if found is None:
        pipeline, options = load_pipeline(model.name, dtype)
        family = options.pop("family", None) or detect_family(pipeline)
    else:
        pipeline, family, options = found
    family = family if model.family == "auto" else model.family
    given = {"guidance_scale": model.guidance_scale, "resolution": model.resolution}
    options |= {k: v for k, v in given.items() if v is not None}
    with _quiet_diffusers():  # casting a meta model logs which modules the hub would keep in float32
        adapter = adapter_class(family)(
            pipeline,
            device=torch.device("meta"),
            dtype=dtype,
            name=model.name,
            gradient_checkpointing=model.gradient_checkpointing,
            **options,
        )
    policy = ImagePolicy(adapter, config.train.trainable, config.lora)
    return adapter, policy


# float32 parameters of hub rewards that cannot be built offline (their models' published counts)
KNOWN_REWARDS = {"pickscore": 986_000_000, "geneval-detector": 155_000_000 + 428_000_000}


def reward_bytes(config) -> tuple[int, list[str]]:
    """(bytes of the rewards' networks, the rewards whose size is not known here). A reward that can
    be built (toy, tiny, local) is counted exactly; a hub reward by its published size."""
    from rewards.combine import RewardSet

    total, unknown = 0, []
    for term in config.rewards.terms:
        try:
            built = RewardSet([(term.name, 1.0, term.args)])
        except (ValueError, OSError, ImportError):
            if term.name in KNOWN_REWARDS:
                total += KNOWN_REWARDS[term.name] * 4
            else:
                unknown.append(term.name)
            continue
        modules = reward_modules(built.rewards[term.name])
        total += _bytes({id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}.values())
    return total, unknown


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _above(meter: LiveBytes, call) -> int:
    """Peak bytes alive during `call()` above those alive before it (all freed again after)."""
    outer = meter.peak
    base = meter.reset_peak()
    call()
    above = meter.peak - base
    meter.peak = max(meter.peak, outer)
    return above


def trace(config) -> Traced:
    """Count and trace the recipe on the meta device."""
    adapter, policy = meta_adapter(config)
    train, sampling = config.train, config.sampling
    denoiser = adapter.model
    largest = max((_bytes(unit.parameters()) for unit in wrap_units(denoiser)), default=0)  # FSDP2's units
    modules = [m for m in held_modules(adapter) if m is not denoiser]
    trainable = list(policy.parameters())
    part = -(-train.batch_size // sampling.chunks)
    meter = LiveBytes()
    with meter, fused_attention_on_meta():
        meter.track_modules([denoiser, *modules])
        prompts = ["a photo"] * train.batch_size  # encodings are padded to the full prompt length
        cond = adapter.encode(prompts)  # the batch's encodings stay with its rollouts
        encodings = _bytes(v for v in cond.values() if isinstance(v, torch.Tensor))
        shape = (*adapter.latent_shape(),)
        x = torch.zeros(part, *shape, device="meta")
        t = torch.full((part,), 500.0, device="meta")
        sliced = _rows(cond, part)
        with torch.no_grad():
            sampling_bytes = _above(meter, lambda: adapter.denoise(x, t, sliced))
            decoding = _above(meter, lambda: adapter.decode(x))
        rows = _rows(cond, train.micro_batch_size)
        xm, tm = _repeat(x, train.micro_batch_size), _repeat(t, train.micro_batch_size)

        def unit():
            with torch.enable_grad():
                output = adapter.denoise(xm, tm, rows)
            if getattr(config.algorithm, "beta", 0.0) > 0:  # the reference pass runs beside the graph
                with torch.no_grad(), policy.reference():
                    traced["reference"] = _above(meter, lambda: adapter.denoise(xm, tm, rows))
            output.float().square().mean().backward()

        traced = {"reference": 0}
        training = _above(meter, unit) - _bytes(trainable)  # the gradients are counted per GPU
        graph = _sampling_graph(config, adapter, meter, x[:1], t[:1], _rows(cond, 1))
    reward_total, unknown = reward_bytes(config)
    latent = torch.Size(shape).numel() * 4  # the rollout keeps float32 latents
    images = 3 * adapter.resolution**2 * 4
    rollouts = train.batch_size * ((sampling.num_steps + 1) * latent + images) + encodings
    return Traced(
        denoiser=_bytes(denoiser.parameters()) + _bytes(denoiser.buffers()),
        largest_block=largest,
        other=sum(_bytes([*m.parameters(), *m.buffers()]) for m in modules),
        trainable=_bytes(trainable),
        trainable_numel=sum(p.numel() for p in trainable),
        rollouts=rollouts,
        training=training,
        reference=traced["reference"],
        sampling=sampling_bytes,
        decoding=decoding,
        rewards=reward_total,
        unknown_rewards=unknown,
        graph=graph,
    )


def _sampling_graph(config, adapter, meter: LiveBytes, x, t, cond) -> int:
    """Bytes of the sampling graph an epoch keeps where algorithm.rollout_graph_mb lets it (DDPO's
    default): every stochastic step's activations for every sample, when they fit under the limit."""
    import random

    from align.algorithms.stochastic import noise_levels

    limit = getattr(config.algorithm, "rollout_graph_mb", 0.0)
    if limit == 0 or config.train.steps_per_pass != 1:
        return 0
    before = meter.current
    with torch.enable_grad():
        output = adapter.denoise(x, t, cond)  # one row's call, its graph alive
        row = meter.current - before - _bytes([output])
    del output
    device, adapter.device = adapter.device, torch.device("cpu")  # the schedule is data: on the CPU
    try:
        sigmas = adapter.schedule(config.sampling.num_steps).sigmas.tolist()
    finally:
        adapter.device = device
    levels = noise_levels(config.algorithm.window, config.sampling.noise_level, sigmas, 0, random.Random(0))
    graph = config.train.batch_size * sum(1 for level in levels if level > 0) * row
    return graph if graph <= limit * 2**20 else 0


def _repeat(tensor: torch.Tensor, count: int) -> torch.Tensor:
    return tensor[:1].expand(count, *tensor.shape[1:]).clone()


def _rows(cond: dict, count: int) -> dict:
    """An encoding of `count` rows (its first row repeated)."""
    return {k: _repeat(v, count) if isinstance(v, torch.Tensor) and v.ndim else v for k, v in cond.items()}


WAYS = ("ddp", "fsdp2", "fsdp2+offload")  # cheapest first


def footprint(traced: Traced, config, gpus: int, way: str) -> Footprint:
    """Bytes per GPU of the recipe run on `gpus` GPUs `way` (ddp: each holds everything; fsdp2: the
    denoiser's weights, gradients, optimiser state and EMA sharded, one block gathered at a time;
    +offload: the shards in host memory, two blocks on the GPU: the one running, the next one)."""
    train = config.train
    shards = gpus if way != "ddp" else 1
    element = traced.trainable // max(traced.trainable_numel, 1)
    moment = 1 if train.optimizer == "adamw8bit" else element
    optimiser = 2 * traced.trainable_numel * moment // shards
    ema = traced.trainable_numel * 4 // shards if train.ema_decay > 0 and train.ema_device != "cpu" else 0
    gradients = traced.trainable // shards
    denoiser = traced.denoiser // shards + (traced.largest_block if way == "fsdp2" else 0)
    if way == "fsdp2+offload":
        denoiser, optimiser, gradients = 2 * traced.largest_block, 0, 0
    return Footprint(
        weights=denoiser + traced.other + traced.rewards,
        optimiser=optimiser,
        ema=ema,
        rollouts=traced.rollouts + (traced.graph if gpus == 1 else 0),
        training=traced.training + gradients,
        sampling=max(traced.sampling, traced.decoding),
    )


KNOBS = (  # what else brings a recipe's footprint down, in the order to try
    ("model.gradient_checkpointing=true", lambda c: not c.model.gradient_checkpointing),
    ("train.micro_batch_size=1", lambda c: c.train.micro_batch_size > 1),
    ("sampling.chunks=4", lambda c: c.sampling.chunks < 4),
    ("train.optimizer=adamw8bit", lambda c: c.train.trainable == "full" and c.train.optimizer == "adamw"),
    ("train.ema_device=cpu", lambda c: c.train.ema_decay > 0 and c.train.ema_device != "cpu"),
)


def recommend(config, footprints: dict[str, Footprint], gpu_bytes: float, gpus: int) -> str:
    """One line: the cheapest way that fits, with its accelerate config, or the knobs to try."""
    limit = HEADROOM * gpu_bytes
    for way in WAYS:
        if footprints[way].total <= limit:
            sharding = "none" if way == "ddp" else "fsdp2"
            settings = f"train.sharding={sharding}" + (" train.fsdp_offload=true" if way.endswith("offload") else "")
            launch = ACCELERATE.get((sharding, gpus))
            if gpus == 1:
                how = f"align train CONFIG {settings}"
            elif launch:
                how = f"accelerate launch --config_file {launch} -m align.cli train CONFIG {settings}"
            else:
                how = f"accelerate launch --num_processes {gpus} -m align.cli train CONFIG {settings}"
            return f"fits {way} on {gpus} GPU(s): {how}"
    knobs = [name for name, applies in KNOBS if applies(config)]
    smallest = min(footprints.values(), key=lambda f: f.total)
    return (
        f"does not fit {gpus} x {gpu_bytes / GIB:.0f} GiB (at best {smallest.total / GIB:.1f} GiB per GPU); "
        f"try {', '.join(knobs) if knobs else 'more GPUs or a smaller resolution'}"
    )


ACCELERATE = {
    ("none", 8): "configs/accelerate/8gpu-ddp.yaml",
    ("fsdp2", 8): "configs/accelerate/8gpu-fsdp.yaml",
    ("fsdp2", 16): "configs/accelerate/2node-16gpu-fsdp.yaml",
}


SCOPE = ("flow-grpo", "ddpo", "pref-grpo", "adv-grpo", "d3po", "prdp")  # one denoiser call per unit


def plan(config, gpus: int, gpu_memory_gb: float) -> dict:
    """The traced recipe, its footprint each way on `gpus` GPUs, and the recommendation line."""
    if config.algorithm.name.startswith("text-"):
        raise ValueError("align plan covers image recipes; a text run's memory is its model's (see docs/distributed.md)")
    traced = trace(config)
    footprints = {way: footprint(traced, config, gpus, way) for way in WAYS}
    return {
        "traced": traced,
        "footprints": footprints,
        "advice": recommend(config, footprints, gpu_memory_gb * GIB, gpus),
    }


def format_plan(config, result: dict, gpus: int, gpu_memory_gb: float) -> str:
    traced, footprints = result["traced"], result["footprints"]
    train = config.train
    lines = [
        f"{config.model.name} ({config.model.dtype}, {traced_resolution(config)}), {train.trainable}"
        f"{' r' + str(config.lora.rank) if train.trainable == 'lora' else ''}, {config.algorithm.name}, "
        f"batch {train.batch_size} per GPU, micro-batch {train.micro_batch_size}, "
        f"checkpointing {'on' if config.model.gradient_checkpointing else 'off'}: GiB per GPU on {gpus} GPU(s)",
        f"{'':<44}" + "".join(f"{way:>15}" for way in WAYS),
    ]
    rows = [
        ("weights (denoiser, encoders, VAE, rewards)", "weights"),
        ("optimiser state", "optimiser"),
        ("EMA", "ema"),
        ("rollouts kept for training", "rollouts"),
        ("training pass (activations, grads)", "training"),
        ("sampling pass (forward or decode)", "sampling"),
    ]
    for label, key in rows:
        lines.append(f"{label:<44}" + "".join(f"{getattr(footprints[w], key) / GIB:>15.2f}" for w in WAYS))
    lines.append(f"{'total (high-water mark)':<44}" + "".join(f"{footprints[w].total / GIB:>15.2f}" for w in WAYS))
    lines.append(f"fits in {HEADROOM:.0%} of {gpu_memory_gb:g} GiB? " + "  ".join(
        f"{w}: {'yes' if footprints[w].total <= HEADROOM * gpu_memory_gb * GIB else 'no'}" for w in WAYS
    ))
    lines.append(result["advice"])
    if traced.unknown_rewards:
        lines.append(f"not counted (their networks cannot be built here): {', '.join(traced.unknown_rewards)}")
    if config.algorithm.name not in SCOPE:
        lines.append(
            f"note: the training pass is traced as one denoiser forward and backward per micro-batch; "
            f"{config.algorithm.name} may hold more (reward backprop: every step with a graph and the decoder)"
        )
    return "\n".join(lines)


def traced_resolution(config) -> str:
    return f"{config.model.resolution} px" if config.model.resolution else "native resolution"
