"""A diverging run stops with one line at the first non-finite loss, writes no checkpoint of
non-finite weights, and never reports success."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from detcompress.cli import app
from detcompress.errors import TrainingDivergedError


@pytest.mark.slow
def test_training_stops_at_the_first_non_finite_loss(tiny_workspace: Path, tmp_path: Path) -> None:
    work_dir = tmp_path / "w"
    result = CliRunner().invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--max-iters", "4",
         "--work-dir", str(work_dir), "--cfg-options", "optim_wrapper.optimizer.lr=1.0e+30",
         "default_hooks.checkpoint.interval=1"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output[-2000:]
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output[-2000:]
    assert "training stopped" in errors[0] and "lower learning rate" in errors[0]
    # With diverged weights, YOLOX's assigner fails on the head's outputs before a loss exists
    # (a traceback before this guard): the outputs are checked as they are computed.
    assert any(
        reason in errors[0]
        for reason in ("the head's outputs hold NaN", " is nan", "the gradients of")
    )
    iteration = int(errors[0].split("iteration ")[1].split(":")[0])
    assert iteration >= 2  # the first step computes its loss on the initial weights
    saved = sorted(p.name for p in work_dir.glob("iter_*.pth"))
    assert f"iter_{iteration}.pth" not in saved and len(saved) == iteration - 1
    for name in saved:  # what was written before is finite
        state = torch.load(work_dir / name, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_checkpoint_of_non_finite_weights_is_refused() -> None:
    from detcompress.train.hooks import FiniteValuesHook

    hook = FiniteValuesHook()
    runner = SimpleNamespace(iter=7)  # stands in for mmengine's Runner: only .iter is read
    hook.before_save_checkpoint(runner, {"state_dict": {"w": torch.ones(3)}})  # finite: fine
    nan = {"state_dict": {"a": torch.ones(2), "b.weight": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(TrainingDivergedError, match=r"iteration 7: 1 weight tensors .*b\.weight"):
        hook.before_save_checkpoint(runner, nan)
    with pytest.raises(TrainingDivergedError, match=r"iteration 8: loss_bbox is inf"):
        hook.after_train_iter(runner, 0, outputs={"loss": float("inf"), "loss_bbox": float("inf")})


def test_a_non_finite_gradient_stops_before_the_step() -> None:
    """The losses can stay finite while a gradient overflows (randomly initialized YOLOv3's
    first QAT step): the step is refused, so no weight becomes NaN."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    from detcompress.train.hooks import FiniteValuesHook

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runner = SimpleNamespace(iter=0, model=model, optim_wrapper=OptimWrapper(optimizer))
    hook = FiniteValuesHook()
    hook.before_train(runner)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()  # finite gradients: the step happens
    before = [p.detach().clone() for p in model.parameters()]
    model[1].bias.grad = torch.tensor([float("nan")])
    with pytest.raises(TrainingDivergedError, match=r"iteration 1: the gradients of 1 parameter "
                       r"tensors hold NaN or inf \(1\.bias"):  # fmt: skip
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    hook.after_train(runner)
    optimizer.step()  # the hook is gone with the run
    # Mixed precision: inf gradients are the loss scaler's business (it skips those steps).
    # (AmpOptimWrapper refuses to be built without a GPU: an uninitialized one stands in.)
    amp_wrapper = AmpOptimWrapper.__new__(AmpOptimWrapper)
    amp_wrapper.optimizer = optimizer
    amp = SimpleNamespace(iter=0, model=model, optim_wrapper=amp_wrapper)
    hook.before_train(amp)
    model[1].bias.grad = torch.tensor([float("inf")])
    optimizer.step()
    hook.after_train(amp)


def test_an_overflowing_gradient_norm_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """With clipping, finite gradients whose norm overflows are all scaled to 0: that step
    changed nothing, which the run says (once) without stopping."""
    from mmengine.logging import MessageHub

    from detcompress.train.hooks import FiniteValuesHook

    hub = MessageHub(name="test_an_overflowing_gradient_norm_is_said_once")
    runner = SimpleNamespace(iter=4, message_hub=hub)
    hook = FiniteValuesHook()
    hook.after_train_iter(runner, 0, outputs={"loss": 1.0})  # nothing logged: no clipping
    hub.update_scalar("train/grad_norm", 1.0e18)
    hook.after_train_iter(runner, 0, outputs={"loss": 1.0})  # large but finite
    assert not caplog.records
    hub.update_scalar("train/grad_norm", float("inf"))
    with caplog.at_level("WARNING", logger="detcompress"):
        hook.after_train_iter(runner, 0, outputs={"loss": 1.0})
        hook.after_train_iter(runner, 0, outputs={"loss": 1.0})
    (record,) = caplog.records
    assert "iteration 5: the gradient norm is inf" in record.getMessage()
    assert "changed nothing" in record.getMessage()
