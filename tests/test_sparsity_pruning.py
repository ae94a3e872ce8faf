"""Magnitude sparsity (NNCF) and filter pruning (torch-pruning), alone and with int8
quantization, end to end on the tiny workspace: schedules, resume mid-schedule, the pruned
architecture in checkpoints, export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import measured_sparsity, outputs_in_fresh_process
from detcompress.cli import app

runner = CliRunner()
pytestmark = pytest.mark.slow

# The tiny workspace: 24 training images, batch 4 -> 6 iterations per epoch.
ITERS_PER_EPOCH = 6
FAST_INIT_OF_SECOND = [  # quantization is the second entry of the combined presets
    "nncf_config.compression.1.initializer.range.num_init_steps=2",
    "nncf_config.compression.1.initializer.batchnorm_adaptation.num_bn_adaptation_steps=2",
]
LEVEL_LINE = re.compile(r"iteration (\d+) \(epoch [\d.]+\): (sparsity|pruning) level ([\d.]+)")


def _compress(config: Path, work_dir: Path, *extra: str) -> tuple[Any, dict]:
    out = work_dir.parent / f"{work_dir.name}.json"
    result = runner.invoke(
        app,
        ["compress", str(config), "--work-dir", str(work_dir), "--json", str(out), *extra],
    )
    assert result.exit_code == 0, result.output
    return result, json.loads(out.read_text())


def _resume(checkpoint: Path, work_dir: Path) -> Any:
    result = runner.invoke(app, ["resume", str(checkpoint), "--work-dir", str(work_dir)])
    assert result.exit_code == 0, result.output
    return result


def _level_changes(log_dir: Path) -> dict[int, float]:
    """iteration -> level, from the run's log file (what the hook logged)."""
    text = "\n".join(p.read_text() for p in log_dir.glob("*/*.log"))
    return {int(m.group(1)): float(m.group(3)) for m in LEVEL_LINE.finditer(text)}


def _state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    x, y = _state(a)["state_dict"], _state(b)["state_dict"]
    assert set(x) == set(y)
    for key in x:
        assert torch.allclose(x[key].float(), y[key].float(), rtol=1e-5, atol=1e-6), key


@pytest.fixture(scope="module")
def runs(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("sparsity_pruning")
    config = tiny_workspace / "configs" / "demo.py"
    return {"base": base, "config": config, "fp32": tiny_fp32["checkpoint"]}


@pytest.fixture(scope="module")
def sparsity_run(runs: dict[str, Any]) -> dict[str, Any]:
    """magnitude_sparsity multistep 0.3 -> 0.5 (epoch 1) -> 0.7 (epoch 2), 14 iterations,
    checkpoints at 7 and 14."""
    work = runs["base"] / "sparsity"
    result, data = _compress(
        runs["config"], work, "--preset", "magnitude_sparsity", "--load-from", runs["fp32"],
        "--max-iters", "14", "--cfg-options",
        "nncf_config.compression.params.multistep_steps=[1,2]",
        "default_hooks.checkpoint.interval=7",
    )  # fmt: skip
    return {"work": work, "data": data, "output": result.output}


def test_magnitude_sparsity_reaches_each_level_at_its_step(sparsity_run: dict[str, Any]) -> None:
    work = sparsity_run["work"]
    assert _level_changes(work) == {ITERS_PER_EPOCH: 0.5, 2 * ITERS_PER_EPOCH: 0.7}
    assert measured_sparsity(work / "iter_7.pth") == pytest.approx(0.5, abs=1e-4)
    assert measured_sparsity(work / "iter_14.pth") == pytest.approx(0.7, abs=1e-4)
    meta = _state(work / "iter_7.pth")["meta"]["detcompress"]
    assert meta["structure"]["state"]["sparsity_level"] == 0.5
    stats = meta["structure"]["statistics"]["magnitude_sparsity"]
    assert stats["target"] == 0.7 and stats["masked_sparsity"] == pytest.approx(0.5, abs=1e-4)
    # The statistics table is logged after validation.
    assert "sparsity level / target" in (next(work.glob("*/*.log"))).read_text()
    assert sparsity_run["data"]["statistics"]["magnitude_sparsity"]["level"] == 0.7


@pytest.fixture(scope="module")
def pruning_run(runs: dict[str, Any]) -> dict[str, Any]:
    """filter_pruning, exponential 0.1 -> 0.3 over 3 epochs, 20 iterations, checkpoints at 10
    and 20; in process, so that the trained model is there to compare with."""
    from detcompress import api

    work = runs["base"] / "pruning"
    plan = api.plan_compress(
        runs["config"], preset="filter_pruning", load_from=Path(runs["fp32"]), work_dir=work,
        max_iters=20, cfg_options=["default_hooks.checkpoint.interval=10"],
    )  # fmt: skip
    result = api.compress(plan)
    return {"work": work, "result": result}


def test_filter_pruning_follows_schedule_and_shrinks_the_model(
    runs: dict[str, Any], pruning_run: dict[str, Any]
) -> None:
    from detcompress.compression.schedules import exponential_level

    work = pruning_run["work"]
    expected = {
        epoch * ITERS_PER_EPOCH: pytest.approx(exponential_level(0.1, 0.3, epoch / 3), abs=1e-4)
        for epoch in (1, 2, 3)
    }
    assert _level_changes(work) == expected
    stats = pruning_run["result"].statistics["filter_pruning"]
    assert stats["level"] == pytest.approx(0.3)
    # Counted here from the checkpoints: params at most 0.75 of the FP32 model's.
    original = _state(Path(runs["fp32"]))["state_dict"]
    pruned = _state(work / "iter_20.pth")["state_dict"]
    count = lambda sd: sum(v.numel() for k, v in sd.items() if "running" not in k)  # noqa: E731
    assert count(pruned) / count(original) <= 0.75
    assert stats["params_ratio"] <= 0.75 and stats["macs_ratio"] <= 0.75
    # 30% of the filters, a little more where the last step rounds kept channels down to 8s.
    assert 0.55 <= stats["filters_ratio"] <= 0.71
    pruned_convs = [
        v.shape[0]
        for k, v in pruned.items()
        if v.dim() == 4 and k in original and v.shape[0] < original[k].shape[0]
    ]
    assert pruned_convs and all(n % 8 == 0 for n in pruned_convs)


def test_filter_pruning_keeps_head_output_channels(pruning_run: dict[str, Any]) -> None:
    model = pruning_run["result"].model
    head = model.bbox_head
    for convs, channels in (
        (head.multi_level_conv_cls, head.num_classes),
        (head.multi_level_conv_reg, 4),
        (head.multi_level_conv_obj, 1),
    ):
        assert [c.out_channels for c in convs] == [channels] * len(convs)
    # ... while the layers feeding them lost filters.
    assert all(c.in_channels < head.feat_channels for c in head.multi_level_conv_cls)


def test_pruned_checkpoint_reloads_with_identical_outputs(
    pruning_run: dict[str, Any], tmp_path: Path
) -> None:
    model = pruning_run["result"].model.eval()
    x = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        here = [t for level in model(x) for t in level]
    there = outputs_in_fresh_process(pruning_run["work"] / "iter_20.pth", x, tmp_path)
    assert len(here) == len(there) > 0
    assert all(torch.equal(a, b) for a, b in zip(here, there, strict=True))


def test_pruning_resume_mid_schedule_matches_uninterrupted(
    runs: dict[str, Any], pruning_run: dict[str, Any]
) -> None:
    resumed = runs["base"] / "pruning_resumed"
    _resume(pruning_run["work"] / "iter_10.pth", resumed)
    assert set(_level_changes(resumed)) == {2 * ITERS_PER_EPOCH, 3 * ITERS_PER_EPOCH}
    _assert_same_weights(pruning_run["work"] / "iter_20.pth", resumed / "iter_20.pth")


def _ir_weights(xml: Path) -> tuple[int, float]:
    """(int8 weight constants, fraction of zeros among all weight constants of the IR)."""
    import numpy as np
    import openvino as ov

    model = ov.Core().read_model(xml)
    int8 = 0
    zeros = total = 0
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) == 4:
            data = op.get_data()
            int8 += data.dtype == np.int8
            zeros += int(np.count_nonzero(data == 0))
            total += data.size
    return int8, zeros / max(total, 1)


# Sparsity on a per-iteration polynomial schedule (0.3 -> 0.7 over one epoch): the level changes
# at every iteration, so resuming at 2 of 4 is mid-schedule with only a few iterations.
PER_ITERATION_SPARSITY = [
    "nncf_config.compression.0.params.schedule=polynomial",
    "nncf_config.compression.0.params.sparsity_target=0.7",
    "nncf_config.compression.0.params.sparsity_target_epoch=1",
    "nncf_config.compression.0.params.update_per_optimizer_step=True",
]


@pytest.mark.parametrize(
    ("preset", "options"),
    [("int8_filter_pruning", []), ("int8_magnitude_sparsity", PER_ITERATION_SPARSITY)],
)
def test_combined_presets_train_resume_and_export(
    runs: dict[str, Any], preset: str, options: list[str]
) -> None:
    work = runs["base"] / preset
    _, data = _compress(
        runs["config"], work, "--preset", preset, "--load-from", runs["fp32"],
        "--max-iters", "4", "--cfg-options", *FAST_INIT_OF_SECOND, *options,
        "default_hooks.checkpoint.interval=2",
    )  # fmt: skip
    stats = data["statistics"]
    assert stats["quantization"]["weight_quantizers"] > 50
    resumed = runs["base"] / f"{preset}_resumed"
    _resume(work / "iter_2.pth", resumed)
    _assert_same_weights(work / "iter_4.pth", resumed / "iter_4.pth")

    out = runs["base"] / f"{preset}_ir"
    result = runner.invoke(
        app, ["export", str(work / "iter_4.pth"), "--out", str(out), "--verify-images", "2"]
    )
    assert result.exit_code == 0, result.output
    int8_weights, zeros = _ir_weights(out / "model.xml")
    assert int8_weights > 50
    if "filter_pruning" in preset:
        assert stats["filter_pruning"]["params_ratio"] <= 0.75
        assert _level_changes(work) == {}  # straight to the target before quantization
    else:
        # Levels grew at every iteration; the masks stay applied through QAT into the IR.
        levels = _level_changes(work)
        assert list(levels) == [1, 2, 3] and levels[1] < levels[2] < levels[3] < 0.7
        sparsity = stats["magnitude_sparsity"]
        assert sparsity["masked_sparsity"] == pytest.approx(levels[3], abs=1e-4)
        assert zeros >= levels[3] - 0.05


def test_rb_sparsity_trains_its_masks_through_the_loss(runs: dict[str, Any]) -> None:
    """The RB loss joins the detector's loss and its level follows the schedule (per iteration
    here: 0 -> 0.5 over one epoch of 6 iterations); a multiplier this large makes 4 iterations
    enough to drop weights."""
    work = runs["base"] / "rb"
    _, data = _compress(
        runs["config"], work, "--preset", "rb_sparsity", "--load-from", runs["fp32"],
        "--max-iters", "4", "--cfg-options", "default_hooks.checkpoint.interval=2",
        "nncf_config.compression.params.sparsity_target_epoch=1",
        "nncf_config.compression.params.update_per_optimizer_step=True",
        "nncf_config.compression.compression_lr_multiplier=50000",
    )  # fmt: skip
    assert "loss_rb_sparsity" in next(work.glob("*/*.log")).read_text()
    expected = {k: pytest.approx(0.5 * k / ITERS_PER_EPOCH, abs=1e-4) for k in (1, 2, 3)}
    assert _level_changes(work) == expected
    logits = [
        v for k, v in _state(work / "iter_4.pth")["state_dict"].items() if k.endswith(".mask")
    ]
    assert len(logits) > 50
    # The loss pulled the masks' logits down from their start (sigmoid 0.99) and dropped weights.
    initial = torch.logit(torch.tensor(0.99)).item()
    mean_logit = sum(t.sum().item() for t in logits) / sum(t.numel() for t in logits)
    assert mean_logit < initial - 0.1
    sparsity = data["statistics"]["rb_sparsity"]
    assert sparsity["level"] == pytest.approx(0.25) and 0 < sparsity["masked_sparsity"] < 1
    # The masks' learning rate is the multiplier times the weights'.
    groups = _state(work / "iter_4.pth")["optimizer"]["param_groups"]
    assert max(g["lr"] for g in groups) == pytest.approx(50000 * min(g["lr"] for g in groups))
    # Resumed, the loss is there again and the schedule goes on from the stored level.
    resumed = runs["base"] / "rb_resumed"
    _resume(work / "iter_2.pth", resumed)
    assert "loss_rb_sparsity" in next(resumed.glob("*/*.log")).read_text()
    assert _level_changes(resumed) == {k: expected[k] for k in (2, 3)}
    assert _state(resumed / "iter_4.pth")["meta"]["iter"] == 4


def test_two_stage_filter_pruning_keeps_fpn_outputs_and_roi_head(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """Faster R-CNN: mmcv's RoIAlign hides the RoI head from torch-pruning, so the FPN's output
    convolutions and the RoI head keep their widths while the layers before them are pruned;
    the checkpoint reloads into that architecture (eval, and an export verified against it)."""
    from detcompress.demo.stock import FAMILIES, write_config

    config = write_config(
        FAMILIES["faster_rcnn"], tiny_workspace / "data", tmp_path / "frcnn.py", small=True
    )
    config.write_text(config.read_text() + "randomness = dict(seed=0)\n")
    result, data = _compress(
        config, tmp_path / "pruned", "--preset", "filter_pruning", "--max-iters", "2"
    )
    assert "filters removed" in result.output
    weights = _state(Path(data["checkpoint"]))["state_dict"]
    fpn_width = 64  # the shrunk stock model's FPN (detcompress.demo.stock)
    lateral = [
        v.shape[0] for k, v in weights.items() if re.match(r"neck.lateral_convs.\d.conv.w", k)
    ]
    assert lateral and all(width < fpn_width for width in lateral)  # pruned
    outputs = [v.shape[0] for k, v in weights.items() if re.match(r"neck.fpn_convs.\d.conv.w", k)]
    assert outputs == [fpn_width] * 4
    assert weights["roi_head.bbox_head.shared_fcs.0.weight"].shape[1] == fpn_width * 7 * 7
    report = tmp_path / "eval.json"
    evaluated = runner.invoke(app, ["eval", data["checkpoint"], "--json", str(report)])
    assert evaluated.exit_code == 0, evaluated.output[-3000:]
    assert json.loads(report.read_text())["bbox_mAP"] == pytest.approx(data["bbox_mAP"], abs=1e-6)
    exported = runner.invoke(
        app, ["export", data["checkpoint"], "--to", "onnx", "--out", str(tmp_path / "onnx"),
              "--verify-images", "2"],
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output[-3000:]
