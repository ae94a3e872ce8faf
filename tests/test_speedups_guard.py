"""The QAT speed-ups run only on an NNCF they were verified with, and switch off cleanly
(one warning, NNCF's own path) otherwise."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture()
def fresh_guard() -> Iterator[None]:
    """The guard's per-process caches cleared before and after (it checks once per process)."""
    from detcompress.compression import speedups

    speedups.unavailable_reason.cache_clear()
    speedups._warn_once.cache_clear()
    yield
    speedups.unavailable_reason.cache_clear()
    speedups._warn_once.cache_clear()


class _Conv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class _Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def _hooked_model() -> torch.nn.Module:
    from nncf.torch.function_hook.wrapper import register_post_function_hook, wrap_model

    torch.manual_seed(0)
    model = wrap_model(_Conv())
    register_post_function_hook(model, "conv/conv2d/0", 0, _Scale())
    return model


def test_every_private_symbol_is_there_on_the_pinned_nncf(fresh_guard: None) -> None:
    from detcompress.compression import speedups

    assert speedups.missing_symbols() == []
    assert speedups.unavailable_reason() is None
    model = _hooked_model()
    undo = speedups.speed_up_training(model)
    assert type(vars(model)["forward"]).__name__ == "_TrainingForward"  # the speed-ups are on
    undo()


def test_unverified_nncf_version_switches_them_off_with_one_warning(
    fresh_guard: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import nncf
    from nncf.torch.function_hook.wrapper import ForwardWithHooks

    from detcompress.compression import speedups

    monkeypatch.setattr(nncf, "__version__", "3.9.0")
    model = _hooked_model()
    x = torch.randn(1, 3, 8, 8)
    expected = model(x)
    with caplog.at_level(logging.WARNING, logger="detcompress"):
        undo = speedups.speed_up_training(model)
        assert speedups.use_fused_cpu_kernels() is False
        speedups.speed_up_training(model)
    assert type(vars(model)["forward"]) is ForwardWithHooks  # NNCF's own forward stays
    assert torch.equal(model(x), expected)
    undo()
    warnings = [r.getMessage() for r in caplog.records if "speed-ups are off" in r.getMessage()]
    assert (
        len(warnings) == 1
        and "NNCF 3.9.0 is not a version they were verified with" in (warnings[0])
    )


def test_a_missing_private_symbol_switches_them_off(
    fresh_guard: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detcompress.compression import speedups

    monkeypatch.setattr(
        speedups,
        "PRIVATE_SYMBOLS",
        (*speedups.PRIVATE_SYMBOLS, ("nncf.torch.function_hook.wrapper", "renamed_in_3_5")),
    )
    reason = speedups.unavailable_reason()
    assert reason is not None and "nncf.torch.function_hook.wrapper.renamed_in_3_5" in reason
    model = _hooked_model()
    speedups.speed_up_training(model)
    assert "forward" not in vars(model) or type(vars(model)["forward"]).__name__ != (
        "_TrainingForward"
    )
