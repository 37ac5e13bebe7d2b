"""Inference-time search at an equal budget of model evaluations, beside ReNO (align.optimize).

The budget is counted in denoiser evaluations per image (NFE: one call on one latent, classifier-free
guidance included). Best-of-N with N = budget // steps is the baseline every method is held to.

tree      Diffusion Tree Sampling (Jain et al. 2025): a tree over the stochastic (SDE) steps of the
          sampler. A node is a partial latent; each iteration selects a path from the root, adds one
          child (one SDE step from that node, whose model output is cached, so a sibling costs no
          evaluation), completes it to an image (the remaining window by SDE, the rest by the ODE),
          scores it, and backs the reward up as a soft value V = 1/lambda log mean_c exp(lambda V_c).
          Selection samples children by exp(lambda V) (DTS, `selection: sample`) or takes the best
          soft value plus a UCB bonus (DTS*, `selection: greedy`), the search variant. The children of
          the root are initial noises, the same as best-of-N's, so the first leaf is best-of-N's first.
prune     Noise-aware pruning (after TTSnap, Yu et al. 2025): start more candidates than best-of-N
          can afford, score each on its one-step clean prediction (the Tweedie estimate x0^ from the
          last model output) at `prune_at` steps, keep the best `keep` fraction, finish the rest.
          TTSnap trains its reward on noisy images; here any registered reward scores the prediction
          (`prune_reward`, default the searched one), and the cheapest step that ranks well is found
          by measuring, as the README's table shows.
guidance  Reward-gradient guidance inside the SDE (Euphonium's process-reward guidance, for images):
          at each stochastic step the mean moves along the gradient of a differentiable reward of the
          clean prediction, x' = sample + g * std * grad / rms(grad), i.e. g noise standard deviations
          per dimension; one denoiser call and one backward per step.
"""

from __future__ import annotations

import math

import torch

from align.evaluate import score_against
from align.noise_settings import SearchSettings
from align.optimize import weighted_reward
from samplers.noise import generators_from_seeds
from samplers.rollout import predicted_clean, rollout
from samplers.types import Schedule

SEED_STRIDE = 1_000_003  # candidate k of seed s starts from noise s + k * SEED_STRIDE, as best-of-N's


class EvaluationCounter:
    """Wraps an adapter's denoiser and counts evaluations (latents passed through it)."""

    def __init__(self, adapter):
        self.adapter, self.used = adapter, 0

    def __call__(self, x, t, cond):
        self.used += x.shape[0]
        return self.adapter.denoise(x, t, cond)


def _schedule_tables(adapter, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps [T], sigmas [T+1]) on the adapter's device in float32, as rollout() uses them."""
    schedule = adapter.schedule(steps)
    return schedule.timesteps.to(adapter.device).float(), schedule.sigmas.to(adapter.device).float()


def _total(rewards: dict, weights: dict, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return weighted_reward(rewards, weights, images, prompts)[0]


class _Node:
    __slots__ = ("x", "step", "children", "visits", "value", "output")

    def __init__(self, x, step):
        self.x, self.step = x, step
        self.children: list[_Node] = []
        self.visits, self.value, self.output = 0, -math.inf, None


def _soft_value(values: list[float], temperature: float) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(temperature * (v - top)) for v in values) / len(values)) / temperature


class _Tree:
    """One prompt's tree. Steps 0 .. window-1 are stochastic and branch; the rest run the ODE."""

    def __init__(self, adapter, prompt: str, seed: int, settings: SearchSettings, counter: EvaluationCounter):
        self.adapter, self.settings, self.counter = adapter, settings, counter
        self.num_steps = settings.steps(adapter)
        self.window = min(settings.window, self.num_steps)
        self.timesteps, self.sigmas = _schedule_tables(adapter, self.num_steps)
        self.prompt, self.cond = prompt, adapter.encode([prompt])
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed * 7_919 + 17)
        self.random = torch.Generator().manual_seed(seed * 104_729 + 3)
        self.root = _Node(None, -1)
        self.best_reward, self.best_image, self.leaves = -math.inf, None, 0

    def _model(self, node: _Node) -> torch.Tensor:
        if node.output is None:
            t = self.timesteps[node.step].expand(1)
            node.output = self.counter(node.x, t, self.cond)
        return node.output

    def _step(self, node: _Node) -> torch.Tensor:
        """One SDE step from a stochastic node: a new child latent (the model output is cached)."""
        i = node.step
        out = self.adapter.step(
            self._model(node),
            node.x,
            self.sigmas[i].expand(1),
            self.sigmas[i + 1].expand(1),
            noise_level=self.settings.noise_level,
            generator=self.generator,
        )
        return out.sample

    def _child(self, node: _Node) -> _Node:
        if node is self.root:
            k = len(node.children)
            noise = self.adapter.initial_noise(generators_from_seeds([self.seed + SEED_STRIDE * k]), 1)
            child = _Node(noise, 0)
        else:
            child = _Node(self._step(node), node.step + 1)
        node.children.append(child)
        return child

    def _limit(self, node: _Node) -> int:
        return math.ceil(self.settings.widening * math.sqrt(node.visits + 1))

    def _select(self, children: list[_Node], visits: int) -> _Node:
        settings = self.settings
        values = [c.value for c in children]
        if settings.selection == "sample":
            weights = torch.tensor(values, dtype=torch.float64) * settings.temperature
            return children[int(torch.multinomial(torch.softmax(weights, 0), 1, generator=self.random))]
        bonus = [settings.exploration * math.sqrt(math.log(visits + 1) / (c.visits + 1)) for c in children]
        return children[max(range(len(values)), key=lambda j: values[j] + bonus[j])]

    def select(self) -> list[_Node]:
        """Walk from the root by the selection rule to the node that grows a new branch (one whose
        children are below its widening limit, or that has none still open); returns the path."""
        path, node = [self.root], self.root
        while node.step < self.window:
            open_children = [c for c in node.children if c.step < self.window]  # not yet images
            if not open_children or len(node.children) < self._limit(node):
                break
            node = self._select(open_children, node.visits)
            path.append(node)
        return path

    def cost(self, node: _Node) -> int:
        """Denoiser evaluations of one new leaf grown from `node`: its model output if not cached, one
        per new branch node above the window's edge, and the ODE over the steps after the window."""
        if node is self.root:  # a new initial noise runs every step
            return self.num_steps
        return int(node.output is None) + (self.window - node.step - 1) + (self.num_steps - self.window)

    def grow(self, path: list[_Node]) -> tuple[list[_Node], _Node]:
        """Grow a new branch from the path's last node down to the window's edge; returns the path and
        the new node there, which `_finish_leaves` completes into an image."""
        path, node = list(path), path[-1]
        while True:
            node = self._child(node)
            path.append(node)
            if node.step >= self.window:
                return path, node

    def backup(self, path: list[_Node], reward: float, image: torch.Tensor) -> None:
        self.leaves += 1
        if reward > self.best_reward:
            self.best_reward, self.best_image = reward, image
        for member in reversed(path):
            member.visits += 1
            member.value = (
                reward
                if not member.children
                else _soft_value([c.value for c in member.children if c.visits], self.settings.temperature)
            )


def _finish_leaves(adapter, trees: list[_Tree], leaves: list[_Node]) -> torch.Tensor:
    """Complete the trees' new leaves (all at the window's edge) by the ODE in one batch, through the
    shared rollout on the rest of the schedule; each tree is charged one evaluation per step."""
    tree = trees[0]
    x = torch.cat([leaf.x for leaf in leaves])
    cond = {key: torch.cat([t.cond[key] for t in trees]) for key in tree.cond}
    rest = Schedule(timesteps=tree.timesteps[tree.window :], sigmas=tree.sigmas[tree.window :])
    if len(rest) == 0:  # the window covers every step: the leaves are images already
        return adapter.decode(x)
    final = rollout(adapter.denoise, adapter.step, rest, x, cond, prompts=[t.prompt for t in trees]).final
    for member in trees:
        member.counter.used += len(rest)
    return adapter.decode(final)


@torch.no_grad()
def tree_search(
    adapter, prompts: list[str], seeds: list[int], rewards: dict, settings: SearchSettings
) -> dict:
    """Diffusion Tree Sampling per prompt within the budget, the trees' ODE completions batched.
    Returns images [B,3,H,W], the best reward per prompt [B], leaves scored and evaluations used
    per prompt."""
    budget = settings.total(adapter)
    trees = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        trees.append(_Tree(adapter, prompt, seed, settings, EvaluationCounter(adapter)))
    done = [False] * len(trees)
    while True:
        # each tree's next leaf is charged its exact cost: a deep branch reuses its prefix's evaluations,
        # so a tree that branches late in the window affords more leaves than best-of-N
        paths = {}
        for row, tree in enumerate(trees):
            if not done[row]:
                path = tree.select()
                if tree.counter.used + tree.cost(path[-1]) <= budget:
                    paths[row] = path
                else:
                    done[row] = True  # the budget cannot pay for the branch the selection chose
        active = sorted(paths)
        if not active:
            break
        grown = [trees[row].grow(paths[row]) for row in active]
        images = _finish_leaves(adapter, [trees[row] for row in active], [g[1] for g in grown])
        values = _total(rewards, settings.weights, images, [prompts[row] for row in active])
        for k, row in enumerate(active):
            trees[row].backup(grown[k][0], float(values[k]), images[k : k + 1])
    return {
        "images": torch.cat([tree.best_image for tree in trees]),
        "reward": torch.tensor([tree.best_reward for tree in trees]),
        "leaves": [tree.leaves for tree in trees],
        "evaluations": [tree.counter.used for tree in trees],
    }


def prune_plan(num_steps: int, prune_at: tuple[int, ...], keep: float, budget: int) -> list[int]:
    """Candidates alive in each stage: the largest start whose cost fits the budget.

    Stage boundaries are 0, prune_at..., num_steps; after each pruning ceil(keep * alive) survive."""
    edges = [0, *sorted(p for p in prune_at if 0 < p < num_steps), num_steps]

    def plan(start):
        alive = [start]
        for _ in edges[1:-1]:
            alive.append(max(1, math.ceil(keep * alive[-1])))
        return alive

    def cost(alive):
        return sum(n * (b - a) for n, a, b in zip(alive, edges[:-1], edges[1:], strict=True))

    start = 1
    while cost(plan(start + 1)) <= budget:
        start += 1
    return plan(start)


@torch.no_grad()
def pruned_search(
    adapter,
    prompts: list[str],
    seeds: list[int],
    rewards: dict,
    settings: SearchSettings,
    prune_rewards: dict | None = None,
) -> dict:
    """Noise-aware pruning per prompt: candidates ranked on their clean prediction at `prune_at`."""
    steps = settings.steps(adapter)
    plan = prune_plan(steps, settings.prune_at, settings.keep, settings.total(adapter))
    cuts = sorted(p for p in settings.prune_at if 0 < p < steps)
    timesteps, sigmas = _schedule_tables(adapter, steps)
    images, best, used = [], [], []
    for prompt, seed in zip(prompts, seeds, strict=True):
        counter = EvaluationCounter(adapter)
        x = adapter.initial_noise(generators_from_seeds([seed + SEED_STRIDE * k for k in range(plan[0])]))
        cond = adapter.encode([prompt] * plan[0])
        stage = 0
        for i in range(steps):
            output = counter(x, timesteps[i].expand(len(x)), {k: v[: len(x)] for k, v in cond.items()})
            if i + 1 in cuts:  # rank on the clean prediction of this output: no extra evaluation
                stage += 1
                clean = predicted_clean(adapter, output, x, sigmas[i].expand(len(x)))
                values = _total(
                    prune_rewards or rewards, settings.weights, adapter.decode(clean), [prompt] * len(x)
                )
                keep = values.argsort(descending=True)[: plan[stage]].sort().values
                x, output = x[keep], output[keep]
            x = adapter.step(output, x, sigmas[i].expand(len(x)), sigmas[i + 1].expand(len(x))).sample
        decoded = adapter.decode(x)
        values = _total(rewards, settings.weights, decoded, [prompt] * len(x))
        top = int(values.argmax())
        images.append(decoded[top : top + 1])
        best.append(float(values[top]))
        used.append(counter.used)
    return {"images": torch.cat(images), "reward": torch.tensor(best), "plan": plan, "evaluations": used}


def guided_sample(
    adapter,
    prompts: list[str],
    seeds: list[int],
    rewards: dict,
    settings: SearchSettings,
    scale: float | None = None,
) -> dict:
    """SDE sampling with reward-gradient guidance on the first `window` steps (scale 0: plain SDE)."""
    scale = settings.guidance if scale is None else scale
    steps = settings.steps(adapter)
    timesteps, sigmas = _schedule_tables(adapter, steps)
    generators = generators_from_seeds(seeds)
    x = adapter.initial_noise(generators, len(prompts), steps)
    cond = adapter.encode(prompts)
    batch = len(prompts)
    for i in range(steps):
        t, sigma, sigma_next = (
            timesteps[i].expand(batch),
            sigmas[i].expand(batch),
            sigmas[i + 1].expand(batch),
        )
        stochastic = i < settings.window
        guided = stochastic and scale != 0
        with torch.set_grad_enabled(guided):
            x_in = x.detach().requires_grad_(guided)
            output = adapter.denoise(x_in, t, cond)
            if guided:
                clean = predicted_clean(adapter, output, x_in, sigma)
                (gradient,) = torch.autograd.grad(
                    _total(rewards, settings.weights, adapter.decode(clean), prompts).sum(), x_in
                )
        with torch.no_grad():
            level = settings.noise_level if stochastic else 0.0
            out = adapter.step(output.detach(), x, sigma, sigma_next, noise_level=level, generator=generators)
            x = out.sample
            if guided:
                rms = gradient.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
                direction = gradient / rms.view(-1, *([1] * (x.ndim - 1)))
                x = x + scale * out.std.float().view(-1, *([1] * (x.ndim - 1))) * direction
    with torch.no_grad():
        images = adapter.decode(x)
        return {"images": images, "reward": _total(rewards, settings.weights, images, prompts)}


SEARCHES = {"tree": tree_search, "prune": pruned_search}


def compare_with_search(
    adapter,
    prompts: list[str],
    seeds: list[int],
    rewards: dict,
    settings: SearchSettings,
    method: str,
    report: dict | None = None,
    prune_rewards: dict | None = None,
) -> dict:
    """A search method against its baseline on the same prompts and seeds, each image scored by
    `report` (default: the searched rewards): tree / prune against best-of-N at the same denoiser
    evaluations, guidance against the plain SDE at the same steps; the ODE sample (base) beside both.
    Returns {"images": {method: [B,3,H,W]}, "summaries": {method: summary, with "vs_baseline": paired
    (difference, SE) of accuracy and of each reward}, "result": the method's own output}."""
    from align.optimize import OptimizeSettings, best_of_n

    steps = settings.steps(adapter)
    images = {"base": adapter.generate(prompts, seeds, num_steps=steps)}
    if method == "guidance":
        images["sde"] = guided_sample(adapter, prompts, seeds, rewards, settings, scale=0.0)["images"]
        result = guided_sample(adapter, prompts, seeds, rewards, settings)
        baseline, name = "sde", "guided"
    elif method in SEARCHES:
        n = settings.total(adapter) // steps
        plain = OptimizeSettings(num_steps=steps, weights=settings.weights)
        images["best_of_n"] = best_of_n(adapter, prompts, seeds, rewards, plain, n)["images"]
        options = {"prune_rewards": prune_rewards} if method == "prune" else {}
        result = SEARCHES[method](adapter, prompts, seeds, rewards, settings, **options)
        baseline, name = "best_of_n", method
    else:
        raise ValueError(f"unknown search method {method!r}; use tree, prune or guidance")
    images[name] = result["images"].detach()
    summaries = score_against(images, prompts, seeds, report or rewards, baseline)
    return {"images": images, "summaries": summaries, "result": result, "baseline": baseline, "method": name}
