"""detcompress's training hook mode (nncf_adapter.speed_up_training) against NNCF's own
FunctionHookMode on a small model with every kind of hook NNCF places: same outputs, same
operation names, also after hooks or parameters change under it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from conftest import nncf_operation_names


class AddConstant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8, 4)
        self.shared = nn.Linear(8, 4)
        self.shared.weight = self.head.weight  # one parameter used twice
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        z = torch.cat([y, self.mix(y)], dim=1)  # a list argument
        pooled = z.mean((2, 3))
        scaled = torch.stack((self.gain, self.gain)).sum(0)  # parameters in a tuple
        out = (self.head(pooled) + self.shared(pooled)) * scaled
        return out.sum(), z


def _model() -> Any:
    from nncf.torch.function_hook.wrapper import (
        register_post_function_hook,
        register_pre_function_hook,
        wrap_model,
    )

    torch.manual_seed(0)
    model = wrap_model(Small())
    register_pre_function_hook(model, "/cat/0", 1, AddConstant(1.0))  # port inside a list
    register_post_function_hook(model, "/mean/0", 0, AddConstant(2.0))
    register_post_function_hook(model, "head.weight", 0, AddConstant(0.5))  # shared constant
    register_post_function_hook(model, "x", 0, AddConstant(0.1))  # model input
    register_pre_function_hook(model, "output_1", 0, AddConstant(3.0))  # model output
    return model


def _run(model: Any, x: torch.Tensor) -> tuple[list[torch.Tensor], list[str]]:
    with nncf_operation_names() as names:
        outputs = model(x)
    return [o.detach().clone() for o in outputs], names


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_training_mode_matches_nncfs_and_follows_changes() -> None:
    from nncf.torch.function_hook.wrapper import ForwardWithHooks, register_post_function_hook

    from detcompress.compression import nncf_adapter

    model = _model()
    x = torch.randn(2, 3, 8, 8)
    expected, expected_names = _run(model, x)
    undo = nncf_adapter.speed_up_training(model)
    assert type(vars(model)["forward"]).__name__ == "_TrainingForward"
    got, names = _run(model, x)
    assert _same(got, expected) and names == expected_names and len(names) > 10

    # A hook added on an operation without parameters, after the plan was made.
    register_post_function_hook(model, "/sum/0", 0, AddConstant(100.0))
    got = _run(model, x)[0]
    # A parameter object replaced (as load_state_dict(assign=True) does): its hook must follow.
    model.head.weight = nn.Parameter(model.head.weight.detach() * 2)
    model.shared.weight = model.head.weight
    got_after_swap = _run(model, x)[0]

    undo()
    assert type(vars(model)["forward"]) is ForwardWithHooks
    assert _same(_run(model, x)[0], got_after_swap)
    model.head.weight = nn.Parameter(model.head.weight.detach() / 2)
    model.shared.weight = model.head.weight
    assert _same(_run(model, x)[0], got)
    assert not _same(got, expected)  # the new hook did act
