"""Checkpoint state files round-trip nested state exactly: keys keep their type (optimizer state is
keyed by int), tuples stay tuples, tensors come back equal."""

import pytest
import torch

from align.checkpoint import load_state, save_state


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and [(type(k), k) for k in a] == [(type(k), k) for k in b]
            and all(same(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_keys_of_every_json_type_round_trip_exactly(tmp_path):
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {
        "optimizer": optimizer.state_dict(),  # {"state": {0: ..., 1: ...}, "param_groups": [...]}
        "mixed": {1: "one", "1": "string one", 2.5: (1, 2), None: [torch.arange(3)]},
        "marker": {"__tensor__": "a plain string under a reserved name"},
    }
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert same(state, loaded)
    assert list(loaded["optimizer"]["state"]) == [0, 1]
    torch.optim.AdamW(layer.parameters(), lr=0.1).load_state_dict(loaded["optimizer"])  # no key fix-up


def test_a_key_json_cannot_hold_is_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match="dict key of type tuple at 'bad'"):
        save_state(tmp_path, {"bad": {(1, 2): 0}})


def test_a_tensor_met_twice_is_saved_once_and_views_of_one_storage_apart(tmp_path):
    shared, base = torch.arange(4.0), torch.arange(6.0)
    save_state(tmp_path, {"a": {"map": shared}, "b": {"map": shared}, "head": base[:3], "tail": base[3:]})
    state = load_state(tmp_path)
    assert state["a"]["map"] is state["b"]["map"] and torch.equal(state["a"]["map"], shared)
    assert torch.equal(state["head"], base[:3]) and torch.equal(state["tail"], base[3:])
