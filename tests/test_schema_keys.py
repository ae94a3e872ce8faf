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


def _enabled_flags(checkpoint: Path) -> tuple[list[int], list[int]]:
    """NNCF's `enabled` flag of each (weight, activation) quantizer in a checkpoint."""
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    weights, activations = [], []
    for key, value in state.items():
        if key.endswith(".enabled"):
            # pre-hooks on port >= 1 quantize weights (as nncf_adapter counts them)
            is_weight = re.search(r"pre_hooks\.[^.]*__[1-9]\d*\.\d+\.enabled$", key) is not None
            (weights if is_weight else activations).append(int(value[0]))
    return weights, activations


def test_quant_start_epoch_and_steps_per_epoch_follow_nncf2s_meaning(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path: Path
) -> None:
    """`steps_per_epoch: 2` makes an epoch 2 iterations (the tiny dataloader's is 6): the
    sparsity step of epoch 1 and `weights_quant_start_epoch: 1` both take effect at iteration
    2; before it the weight quantizers are off (their `enabled` flags in the checkpoint)."""
    preset = tmp_path / "late_weights.yaml"
    preset.write_text(
        "compression:\n"
        "  - algorithm: magnitude_sparsity\n"
        "    sparsity_init: 0.1\n"
        "    params: {schedule: multistep, multistep_steps: [1], "
        "multistep_sparsity_levels: [0.1, 0.5], steps_per_epoch: 2}\n"
        "  - algorithm: quantization\n"
        "    initializer: {range: {num_init_steps: 2}, batchnorm_adaptation: "
        "{num_bn_adaptation_steps: 1}}\n"
        "    params: {weights_quant_start_epoch: 1}\n"
    )
    work_dir = tmp_path / "run"
    result = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", str(preset),
         "--load-from", tiny_fp32["checkpoint"], "--max-iters", "3", "--work-dir", str(work_dir),
         "--cfg-options", "default_hooks.checkpoint.interval=1",
         "default_hooks.checkpoint.max_keep_ckpts=5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    early_weights, early_activations = _enabled_flags(work_dir / "iter_1.pth")
    late_weights, late_activations = _enabled_flags(work_dir / "iter_3.pth")
    assert early_weights and set(early_weights) == {0}  # epoch 0.5: weights still in float
    assert early_activations and set(early_activations) == {1}
    assert set(late_weights) == {1} and set(late_activations) == {1}  # epoch 1.5: all on
    log = "\n".join(p.read_text() for p in work_dir.glob("*/*.log"))
    assert "iteration 2 (epoch 1.00): weight quantizers on" in log
    assert "iteration 2 (epoch 1.00): sparsity level 0.5000" in log
