"""What a training run watches on its own samples every epoch, and the flags that may end it.

measure   the hacking monitors of rewards/monitors.py on the epoch's images, and for every reward that
          is an ensemble of proxies (rewards/proxy.py) its members' disagreement on them
          (`NAME/disagreement`: the mean std between members), the signal that the policy has left the
          samples the proxies were fitted on (Coste et al. 2023; Eisenstein et al. 2023).
flags     the config's `monitor.flags`, each {monitor, one of above / below / rise, and optionally
          window: k}: the mean of the monitor's last k epochs (1 by default) is compared, and `rise: r`
          flags that mean above r times the mean of the run's first k epochs (the history is kept in
          the run's checkpoint, so that a resumed run compares with the same baseline). With
          `monitor.stop` the run ends at the epoch of the first flag: it evaluates, checkpoints and
          records `stopped` in its summary.
"""

from __future__ import annotations

import torch

from rewards.monitors import hacking_monitors

BOUNDS = ("above", "below", "rise")


def flag_problems(flags: list):
    """Config check of `monitor.flags`: yields (path, problem) for each malformed entry."""
    for i, flag in enumerate(flags):
        bounds = [k for k in BOUNDS if isinstance(flag, dict) and k in flag]
        unknown = set(flag) - {"monitor", "window", *BOUNDS} if isinstance(flag, dict) else set()
        window = flag.get("window", 1) if isinstance(flag, dict) else 1
        if not isinstance(flag, dict) or "monitor" not in flag or len(bounds) != 1 or unknown:
            yield ["flags"], f"entry {i}: expected {{monitor: NAME, one of {' / '.join(BOUNDS)}: VALUE, window: EPOCHS}}, got {flag!r}"
        elif not isinstance(window, int) or window < 1:
            yield ["flags"], f"entry {i}: window must be a whole number of epochs >= 1, got {window!r}"


class Monitors:
    """`accelerator` (the run's) averages the values over its processes; None: one process."""

    def __init__(self, settings, rewards: dict, accelerator=None):
        self.flags, self.stop, self.accelerator = list(settings.flags), settings.stop, accelerator
        self.proxies = {name: r for name, r in rewards.items() if callable(getattr(r, "disagreement", None))}
        self.history: dict[str, list[float]] = {}

    @torch.no_grad()
    def measure(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """The monitors of this process's samples, averaged over the processes of a distributed run (so
        that every process raises the same flags, and a stop ends them all at the same epoch)."""
        values = hacking_monitors(images)
        for name, reward in self.proxies.items():
            values[f"{name}/disagreement"] = reward.disagreement(images, prompts)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            total = torch.tensor(list(values.values()), dtype=torch.float64, device=images.device)
            values = dict(zip(values, self.accelerator.reduce(total, "mean").tolist()))
        for name, value in values.items():
            self.history.setdefault(name, []).append(value)
        return values

    def observe(self, images: torch.Tensor, prompts: list[str]) -> dict:
        """An epoch's record entries: {"monitors": values, "monitor_flags": the flags raised}."""
        values = self.measure(images, prompts)
        return {"monitors": values, "monitor_flags": self.raised(values)}

    def raised(self, values: dict[str, float]) -> list[str]:
        """The flags that hold for this epoch's values, as `monitor above|below|rise VALUE` strings."""
        raised = []
        for flag in self.flags:
            name = flag["monitor"]
            if name not in values:
                known = ", ".join(sorted(values))
                raise ValueError(f"monitor.flags: no monitor {name!r} is measured; the run measures {known}")
            window = flag.get("window", 1)
            seen = self.history.get(name) or [values[name]]
            value = sum(seen[-window:]) / len(seen[-window:])
            first = sum(seen[:window]) / len(seen[:window])
            if "above" in flag and value > flag["above"] or "below" in flag and value < flag["below"]:
                raised.append(f"{name} {'above' if 'above' in flag else 'below'} {flag.get('above', flag.get('below'))}")
            elif "rise" in flag and len(seen) > window and value > flag["rise"] * first:
                raised.append(f"{name} rose {value / first:.2f}x (flag at {flag['rise']}x)")
        return raised

    def state_dict(self) -> dict:
        return {"history": {name: list(values) for name, values in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history.update(state.get("history", {}))
