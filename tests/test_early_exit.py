"""Accuracy-aware training, NNCF 2's `early_exit` (`compress --max-accuracy-drop` with
training, or an `accuracy_aware_training` section): the stopping rule, the section's schema, and
runs on the tiny demo that stop before their iteration limit and resume with their state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST_INIT
from detcompress.cli import app
from detcompress.config.accuracy_aware import Budget, with_budget
from detcompress.config.presets import build_nncf_config
from detcompress.errors import PresetError
from detcompress.train.early_exit import EarlyExitState

runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# The stopping rule


def test_stops_at_the_first_fully_compressed_validation_within_budget() -> None:
    state = EarlyExitState(reference=0.600, budget=Budget(0.5, relative=False))
    first = state.record(0, 0, 0.580, fully_compressed=True)
    assert first["best"] and not first["within_budget"] and first["drop_points"] == 2.0
    # Better but not fully compressed yet (a sparsity schedule below its target): neither the
    # best nor a stop, as in NNCF 2.
    early = state.record(1, 0, 0.599, fully_compressed=False, waiting="sparsity level 0.1 of 0.5")
    assert not early["best"] and not early["within_budget"]
    assert state.best is not None and state.best["iteration"] == 0
    worse = state.record(2, 0, 0.570, fully_compressed=True)
    assert not worse["best"] and not worse["within_budget"]
    assert "missed by 1.50" in state.verdict()
    last = state.record(3, 0, 0.596, fully_compressed=True)
    assert last["best"] and last["within_budget"]
    assert state.stopped is not None and state.stopped["iteration"] == 3
    assert "stopped at iteration 3" in state.verdict()
    assert EarlyExitState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_relative_budget_is_a_share_of_the_reference() -> None:
    state = EarlyExitState(reference=0.400, budget=Budget(1.0, relative=True))
    assert not state.record(0, 0, 0.3959, fully_compressed=True)["within_budget"]
    assert state.record(1, 0, 0.3961, fully_compressed=True)["within_budget"]


def test_no_fully_compressed_validation_says_train_longer() -> None:
    state = EarlyExitState(reference=0.5, budget=Budget(0.5, relative=False))
    state.record(0, 0, 0.5, fully_compressed=False, waiting="pruning level 0.100 of 0.3")
    assert state.best is None
    assert "pruning level 0.100 of 0.3" in state.verdict() and "train longer" in state.verdict()


# ---------------------------------------------------------------------------------------------
# The section, as NNCF 2 wrote it


def test_nncf2_section_is_accepted_with_its_meaning(tmp_path: Path) -> None:
    config = build_nncf_config(
        {
            "accuracy_aware_training": {
                "mode": "early_exit",
                "params": {
                    "maximal_absolute_accuracy_degradation": 0.005,
                    "maximal_total_epochs": 3,
                },
            },
            "compression": [{"algorithm": "quantization"}],
        },
        "nncf2.json",
    )
    aware = config.accuracy_aware
    assert aware is not None and aware.mode == "early_exit" and aware.maximal_total_epochs == 3
    # The absolute degradation is in the metric's unit: mmdet's mAP fraction.
    assert aware.budget.allowed(0.6) == pytest.approx(0.005)
    # Without a degradation, NNCF 2's default: 1% of the reference.
    default = build_nncf_config(
        {"accuracy_aware_training": {"mode": "early_exit"}, "compression": []}, "x"
    ).accuracy_aware
    assert default is not None and default.budget == Budget(1.0, relative=True)


def test_command_line_budget_becomes_the_section() -> None:
    raw = {
        "accuracy_aware_training": {
            "mode": "early_exit",
            "params": {"maximal_relative_accuracy_degradation": 2, "maximal_total_epochs": 5},
        }
    }
    params = with_budget(raw, Budget(0.5, relative=False))["accuracy_aware_training"]["params"]
    assert params == {"maximal_absolute_accuracy_degradation": 0.005, "maximal_total_epochs": 5}
    assert with_budget({}, Budget(1.5, relative=True))["accuracy_aware_training"] == {
        "mode": "early_exit",
        "params": {"maximal_relative_accuracy_degradation": 1.5},
    }


@pytest.mark.parametrize(
    ("section", "fragments"),
    [
        ({"mode": "early"}, ["'accuracy_aware_training.mode'", "did you mean 'early_exit'?"]),
        (
            {"mode": "early_exit", "params": {"patience_epochs": 2}},
            ["'accuracy_aware_training.params.patience_epochs'", "valid with early_exit"],
        ),
        (
            {
                "params": {
                    "maximal_absolute_accuracy_degradation": 0.01,
                    "maximal_relative_accuracy_degradation": 1,
                }
            },
            ["sets both", "give one"],
        ),
        (
            {"params": {"maximal_absolute_accuracy_degradation": 1.5}},
            ["a number in [0, 1]", "0.005 = 0.5 points"],
        ),
        ({"params": {"maximal_total_epoch": 3}}, ["did you mean 'maximal_total_epochs'?"]),
    ],
)
def test_bad_section_gives_one_precise_line(section: dict, fragments: list[str]) -> None:
    with pytest.raises(PresetError) as error:
        build_nncf_config(
            {"accuracy_aware_training": section, "compression": {"algorithm": "quantization"}},
            "preset.yaml",
        )
    message = str(error.value)
    assert "\n" not in message and message.startswith("preset.yaml: ")
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------------------------------------
# Runs on the tiny demo

# Sparsity 0.1, then 0.5 from "epoch" 2 (one iteration each): fully compressed after iteration 3.
SPARSITY_WITH_BUDGET = """\
accuracy_aware_training:
  mode: early_exit
  params: {maximal_absolute_accuracy_degradation: 1.0}
compression:
  algorithm: magnitude_sparsity
  sparsity_init: 0.1
  params:
    schedule: multistep
    multistep_steps: [2]
    multistep_sparsity_levels: [0.1, 0.5]
    steps_per_epoch: 1
"""


def _meta(checkpoint: Path | str) -> dict[str, Any]:
    meta: dict[str, Any] = torch.load(checkpoint, weights_only=True)["meta"]
    return meta


@pytest.fixture(scope="module")
def sparsity_runs(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """An early_exit sparsity run cut at iteration 2 (before its schedule ends), then resumed
    with a limit of 6 iterations."""
    base = tmp_path_factory.mktemp("early_exit")
    preset = base / "sparsity_budget.yaml"
    preset.write_text(SPARSITY_WITH_BUDGET)
    work = base / "run"
    first = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", str(preset),
         "--load-from", tiny_fp32["checkpoint"], "--max-iters", "2", "--work-dir", str(work),
         "--json", str(base / "first.json"), "--cfg-options", "train_cfg.val_interval=1",
         "default_hooks.checkpoint.interval=1"],
    )  # fmt: skip
    assert first.exit_code == 0, first.output[-3000:]
    resumed = runner.invoke(
        app,
        ["resume", str(work / "iter_2.pth"), "--max-iters", "6",
         "--json", str(base / "resumed.json")],
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.output[-3000:]
    return {
        "work": work,
        "first": json.loads((base / "first.json").read_text()),
        "first_output": first.output,
        "resumed": json.loads((base / "resumed.json").read_text()),
        "resumed_output": resumed.output,
    }


@pytest.mark.slow
def test_run_cut_before_full_compression_has_no_answer(sparsity_runs: dict[str, Any]) -> None:
    first = sparsity_runs["first"]["accuracy_aware"]
    # Validated after initialization and after each iteration, none fully compressed.
    assert [v["iteration"] for v in first["validations"]] == [0, 1, 2]
    assert not any(v["fully_compressed"] for v in first["validations"])
    assert first["best"] is None and not first["within_budget"]
    assert "train longer" in sparsity_runs["first_output"]
    # The reference is the uncompressed model's validation: the FP32 run's own number, and it
    # is in the work dir and in the checkpoint.
    work = sparsity_runs["work"]
    assert (
        json.loads((work / "accuracy_aware.json").read_text())["reference"] == (first["reference"])
    )
    stored = _meta(work / "iter_2.pth")["detcompress"]["accuracy_aware"]
    # mmengine saves an iteration's checkpoint before that iteration's validation.
    assert stored["reference"] == first["reference"]
    assert [v["iteration"] for v in stored["validations"]] == [0, 1]


@pytest.mark.slow
def test_resumed_run_stops_within_budget_before_its_limit(
    sparsity_runs: dict[str, Any], tiny_fp32: dict, tmp_path: Path
) -> None:
    resumed = sparsity_runs["resumed"]
    aware = resumed["accuracy_aware"]
    # The state went on: the reference was not measured again, the validations continue.
    assert "validating the uncompressed model" not in sparsity_runs["resumed_output"]
    assert aware["reference"] == sparsity_runs["first"]["accuracy_aware"]["reference"]
    assert aware["reference"] == pytest.approx(tiny_fp32["bbox_mAP"])
    # iter_2.pth was saved before its validation: the resumed run validates it first.
    assert [v["iteration"] for v in aware["validations"]] == [0, 1, 2, 3]
    # Sparsity reaches 0.5 at iteration 2 (runner.iter 2 -> epoch 2), so iteration 3's
    # validation is the first fully compressed one; within the budget: the run stops there,
    # 3 iterations short of its limit.
    assert aware["within_budget"] and aware["stopped"]["iteration"] == 3
    assert resumed["iterations"] == 3
    work = sparsity_runs["work"]
    best = work / "best_coco_bbox_mAP_iter_3.pth"
    assert resumed["checkpoint"] == str(best) and best.is_file()
    assert not (work / "iter_4.pth").exists() and not (work / "iter_6.pth").exists()
    meta = _meta(best)
    assert meta["iter"] == 3  # resumable from where it stopped, not one iteration later
    assert meta["detcompress"]["structure"]["state"]["sparsity_level"] == 0.5
    assert meta["detcompress"]["accuracy_aware"]["stopped"]["iteration"] == 3
    # The metric at the stop is the best checkpoint's own validation.
    report = tmp_path / "eval.json"
    evaluated = runner.invoke(app, ["eval", str(best), "--json", str(report)])
    assert evaluated.exit_code == 0, evaluated.output[-3000:]
    assert json.loads(report.read_text())["bbox_mAP"] == pytest.approx(aware["stopped"]["bbox_mAP"])
    # A run that already ended within its budget is not resumed again.
    again = runner.invoke(app, ["resume", str(best), "--max-iters", "8"])
    lines = [line for line in again.output.splitlines() if line.strip()]
    assert again.exit_code == 2 and len(lines) == 1, again.output
    assert "already ended within its budget at iteration 3" in lines[0]


@pytest.mark.slow
def test_int8_within_budget_after_initialization_trains_nothing(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path: Path
) -> None:
    """The quantized model is validated before training (NNCF 2's early exit): within the
    budget, no iteration runs and the initialized model is the best checkpoint."""
    report = tmp_path / "qat.json"
    result = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", "int8",
         "--load-from", tiny_fp32["checkpoint"], "--max-iters", "4",
         "--max-accuracy-drop", "100", "--work-dir", str(tmp_path / "qat"),
         "--json", str(report), "--cfg-options", *FAST_INIT],
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    data = json.loads(report.read_text())
    assert data["iterations"] == 0
    assert [v["iteration"] for v in data["accuracy_aware"]["validations"]] == [0]
    assert data["checkpoint"] == str(tmp_path / "qat" / "best_coco_bbox_mAP_iter_0.pth")
    meta = _meta(data["checkpoint"])["detcompress"]
    assert meta["compressed"] and meta["structure"]["statistics"]["quantization"]
    # The command line's budget is stored as NNCF 2's section (mAP fraction).
    section = meta["nncf_config"]["accuracy_aware_training"]
    assert section == {
        "mode": "early_exit",
        "params": {"maximal_absolute_accuracy_degradation": 1.0},
    }


@pytest.mark.parametrize(
    ("preset", "fragment"),
    [
        (
            "accuracy_aware_training: {mode: adaptive_compression_level}\n"
            "compression: {algorithm: quantization}\n",
            "adaptive_compression_level searches the level of filter_pruning alone",
        ),
        (
            "accuracy_aware_training: {mode: adaptive_compression_level}\n"
            "compression: {algorithm: filter_pruning}\n",
            "trains for its own epochs",
        ),
        (
            "accuracy_aware_training: {mode: early_exit}\n",
            "compresses nothing",
        ),
    ],
)
def test_unsupported_budget_runs_are_refused_in_one_line(
    tiny_workspace: Path, tmp_path: Path, preset: str, fragment: str
) -> None:
    path = tmp_path / "preset.yaml"
    path.write_text(preset)
    result = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", str(path),
         "--max-iters", "2", "--work-dir", str(tmp_path / "w")],
    )  # fmt: skip
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert fragment in lines[0]
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_epoch_based_run_validates_every_epoch_and_names_the_best_by_epoch(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path: Path
) -> None:
    """--max-epochs makes an epoch-based run, which otherwise validates only at its end; the
    tiny demo's config is iteration-based, so early exit validates after every epoch (NNCF 2's
    rule) and stops after epoch 1 (6 iterations), the first fully compressed validation."""
    preset = tmp_path / "sparsity_budget.yaml"
    preset.write_text(SPARSITY_WITH_BUDGET)
    report = tmp_path / "epochs.json"
    work = tmp_path / "epochs"
    result = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", str(preset),
         "--load-from", tiny_fp32["checkpoint"], "--max-epochs", "3", "--work-dir", str(work),
         "--json", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    aware = json.loads(report.read_text())["accuracy_aware"]
    assert [(v["iteration"], v["epoch"]) for v in aware["validations"]] == [(0, 0), (6, 1)]
    assert aware["stopped"]["epoch"] == 1
    assert (work / "best_coco_bbox_mAP_epoch_1.pth").is_file()
    assert _meta(work / "best_coco_bbox_mAP_epoch_1.pth")["epoch"] == 1


def test_a_budget_needs_the_trained_uncompressed_model(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", "int8",
         "--max-iters", "2", "--max-accuracy-drop", "0.5", "--work-dir", str(tmp_path / "w")],
    )  # fmt: skip
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "give its checkpoint with --load-from" in lines[0]
    assert not (tmp_path / "w").exists()
