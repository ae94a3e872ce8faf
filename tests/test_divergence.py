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
    assert "the head's outputs hold NaN" in errors[0] or " is nan" in errors[0]
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
