"""NNCF 2 schema keys that detcompress carries out on NNCF 3 (not only validates)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detcompress.cli import app

runner = CliRunner()
pytestmark = pytest.mark.slow

# The tiny workspace: 24 training images in batches of 4, so one epoch is 6 iterations.
ITERATIONS_PER_EPOCH = 6


def _enabled_flags(checkpoint: Path) -> tuple[list[int], list[int]]:
    """NNCF's `enabled` flag of each (weight, activation) quantizer in a checkpoint."""
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    weights, activations = [], []
    for key, value in state.items():
        if key.endswith(".enabled"):
            # pre-hooks on port >= 1 quantize weights (see nncf_adapter._WEIGHT_HOOK)
            is_weight = re.search(r"pre_hooks\.[^.]*__[1-9]\d*\.\d+\.enabled$", key) is not None
            (weights if is_weight else activations).append(int(value[0]))
    return weights, activations


def test_weights_quant_start_epoch_keeps_weight_quantizers_off_until_then(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path: Path
) -> None:
    preset = tmp_path / "late_weights.yaml"
    preset.write_text(
        "compression:\n"
        "  algorithm: quantization\n"
        "  initializer: {range: {num_init_steps: 2}, batchnorm_adaptation: "
        "{num_bn_adaptation_steps: 1}}\n"
        "  params: {weights_quant_start_epoch: 1}\n"
    )
    work_dir = tmp_path / "run"
    result = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", str(preset),
         "--load-from", tiny_fp32["checkpoint"], "--max-iters", str(ITERATIONS_PER_EPOCH + 2),
         "--work-dir", str(work_dir), "--cfg-options", "default_hooks.checkpoint.interval=4",
         "default_hooks.checkpoint.max_keep_ckpts=5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    early_weights, early_activations = _enabled_flags(work_dir / "iter_4.pth")
    late_weights, late_activations = _enabled_flags(work_dir / "iter_8.pth")
    assert early_weights and set(early_weights) == {0}  # epoch 0.67: weights still in float
    assert early_activations and set(early_activations) == {1}
    assert set(late_weights) == {1} and set(late_activations) == {1}  # epoch 1.33: all on
    log = "\n".join(p.read_text() for p in work_dir.glob("*/*.log"))
    assert "iteration 6 (epoch 1.00): weight quantizers on" in log


def test_steps_per_epoch_sets_the_length_of_a_schedule_epoch(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path: Path
) -> None:
    preset = tmp_path / "sparsity.yaml"
    preset.write_text(
        "compression:\n"
        "  algorithm: magnitude_sparsity\n"
        "  sparsity_init: 0.1\n"
        "  params: {schedule: multistep, multistep_steps: [1], "
        "multistep_sparsity_levels: [0.1, 0.5], steps_per_epoch: 2}\n"
    )
    work_dir = tmp_path / "run"
    result = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", str(preset),
         "--load-from", tiny_fp32["checkpoint"], "--max-iters", "3",
         "--work-dir", str(work_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    log = "\n".join(p.read_text() for p in work_dir.glob("*/*.log"))
    # Epoch 1 starts at iteration 2 (2 steps per epoch), not 6 (the dataloader's length).
    assert "iteration 2 (epoch 1.00): sparsity level 0.5000" in log
