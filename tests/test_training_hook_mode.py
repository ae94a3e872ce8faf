"""detcompress's training hook mode (speedups.speed_up_training) against NNCF's own
FunctionHookMode on a small model with every kind of hook NNCF places: same outputs, same
operation names, also after hooks or parameters change under it."""

from __future__ import annotations

from typing import Any

import pytest
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

    from detcompress.compression import speedups

    model = _model()
    x = torch.randn(2, 3, 8, 8)
    expected, expected_names = _run(model, x)
    undo = speedups.speed_up_training(model)
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


class Scale(nn.Module):
    """A hook with a parameter of its own, as a quantizer has."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class AtBoundaries(nn.Module):
    """Every hook below sits at a module boundary, as on mmdet's detectors: weights of
    convolutions and linear layers, the last operation of a module, a module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = Swish()
        self.up = nn.Upsample(scale_factor=2)
        self.mix = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        z = self.up(y) + self.up(self.mix(y))
        return self.fc(z.mean((2, 3)))


def test_hooks_at_module_boundaries_run_without_hook_mode() -> None:
    """After one recorded forward, forwards run with each hook wrapped around its module instead
    of under a hook mode: same outputs and gradients (hook parameters included) as NNCF's."""
    from nncf.torch.function_hook.wrapper import (
        register_post_function_hook,
        register_pre_function_hook,
        wrap_model,
    )

    from detcompress.compression import speedups

    torch.manual_seed(0)
    model = wrap_model(AtBoundaries())
    for op, value in (("conv/conv2d/0", 0.5), ("mix/conv2d/0", 0.7), ("fc/linear/0", 0.9)):
        register_pre_function_hook(model, op, 1, Scale(value))  # weights
    for op, value in (
        ("act/mul/0", 1.1),
        ("up/interpolate/0", 1.2),
        ("up/interpolate/1", 1.3),  # the same module's second call, another hook
        ("mix/conv2d/0", 1.4),  # the output of an operation whose weight is hooked too
        ("x", 1.5),  # model input
    ):
        register_post_function_hook(model, op, 0, Scale(value))
    batches = [torch.randn(2, 3, 8, 8) for _ in range(3)]

    def step(x: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return [out.detach().clone()] + [p.grad.clone() for p in model.parameters()]

    expected = []
    with nncf_operation_names() as expected_names:
        expected.append(step(batches[0]))
    expected += [step(x) for x in batches[1:]]
    undo = speedups.speed_up_training(model)
    got = []
    with nncf_operation_names() as recorded_names:  # the recording forward
        got.append(step(batches[0]))
    with nncf_operation_names() as unnamed:  # forwards with module hooks: no hook mode at all
        got += [step(x) for x in batches[1:]]
    assert dict(vars(model)["forward"].forwards) == {"recorded": 1, "module hooks": 2}
    assert recorded_names == expected_names and "up/interpolate/1" in expected_names
    assert unnamed == []
    assert all(_same(a, b) for a, b in zip(got, expected, strict=True))
    assert len(expected[0]) == 1 + 6 + 8  # output, the model's and the hooks' gradients
    undo()
    assert _same(step(batches[2]), expected[2])


def test_hooks_inside_a_module_keep_the_hook_mode() -> None:
    """A hook on an operation in the middle of a module's computation cannot be placed at a
    module boundary: the training forward stays in the hook mode."""
    from detcompress.compression import speedups

    model = _model()  # hooks on operations of the model's own forward
    x = torch.randn(2, 3, 8, 8)
    expected = _run(model, x)[0]
    speedups.speed_up_training(model)
    got = [_run(model, x)[0] for _ in range(3)]
    assert dict(vars(model)["forward"].forwards) == {"recorded": 1, "hook mode": 2}
    assert all(_same(g, expected) for g in got)


class Repeats(nn.Module):
    """Calls one hooked module as often as its input says: a forward whose operations depend on
    the input, which neither NNCF's operation names nor module hooks can follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        for _ in range(repeats):
            x = self.conv(x)
        return x


def test_a_module_called_more_often_than_recorded_is_an_error() -> None:
    from nncf.torch.function_hook.wrapper import register_pre_function_hook, wrap_model

    from detcompress.compression import speedups

    model = wrap_model(Repeats())
    register_pre_function_hook(model, "conv/conv2d/0", 1, Scale(0.5))
    speedups.speed_up_training(model)
    x = torch.randn(1, 3, 4, 4)
    model(x, repeats=1)  # recorded: one call of conv
    model(x, repeats=1)
    with pytest.raises(RuntimeError, match="Conv2d was called more often than in the first"):
        model(x, repeats=2)
