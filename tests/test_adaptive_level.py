"""NNCF 2's adaptive_compression_level for filter pruning: the level search's step rule, and a
search on the tiny demo whose levels each continue from the last accepted model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detcompress.cli import app
from detcompress.config.accuracy_aware import Budget
from detcompress.train.adaptive_level import LevelSearch, SearchSettings

runner = CliRunner()


def _search(**settings: float) -> LevelSearch:
    return LevelSearch(0.600, Budget(0.5, relative=False), SearchSettings(**settings))  # type: ignore[arg-type]


def test_steps_up_within_budget_and_halves_the_step_on_each_turn() -> None:
    search = _search(initial_step=0.1, minimal_step=0.025, patience_epochs=1)
    search.record(0.3, 0.598, 5, "initial.pth", "fp32.pth")  # within (-0.2)
    assert search.next_level() == pytest.approx(0.4)
    search.record(0.4, 0.590, 1, "l40.pth", "initial.pth")  # over (-1.0): down, step 0.05
    assert search.next_level() == pytest.approx(0.35)
    # Filters are gone at 0.4: 0.35 starts from the best accepted level below it.
    start = search.start_for(0.35)
    assert start is not None and start["checkpoint"] == "initial.pth"
    search.record(0.35, 0.596, 1, "l35.pth", "initial.pth")  # within: up, step 0.025
    assert search.next_level() == pytest.approx(0.375)
    start = search.start_for(0.375)
    assert start is not None and start["checkpoint"] == "l35.pth"
    search.record(0.375, 0.594, 1, "l375.pth", "l35.pth")  # over: step 0.0125 < minimum
    assert search.next_level() is None
    assert "minimal_compression_rate_step" in search.ended_because
    best = search.best
    assert best is not None and best["level"] == 0.35 and best["checkpoint"] == "l35.pth"
    assert "pruning level 0.35" in search.verdict()
    assert search.epochs_trained == 8


def test_nothing_within_budget_walks_down_to_nncf2s_minimum() -> None:
    search = _search(initial_step=0.1, minimal_step=0.025)
    search.record(0.2, 0.50, 5, "initial.pth", "fp32.pth")
    assert search.next_level() == pytest.approx(0.1)
    assert search.start_for(0.1) is None  # no accepted level below: the uncompressed model
    search.record(0.1, 0.55, 3, "l10.pth", "fp32.pth")
    assert search.next_level() is None  # 0.0 is below NNCF 2's minimum of 0.05
    assert search.best is None and "no pruning level" in search.verdict()


def test_total_epochs_bound_the_search() -> None:
    search = _search(patience_epochs=3, maximal_total_epochs=10)
    search.record(0.3, 0.6, 5, "initial.pth", "fp32.pth")
    assert search.next_level() == pytest.approx(0.4)
    search.record(0.4, 0.6, 3, "l40.pth", "initial.pth")
    assert search.next_level() is None and "maximal_total_epochs" in search.ended_because


def test_a_level_tried_before_is_not_trained_again() -> None:
    search = _search(initial_step=0.1, minimal_step=0.025)
    search.record(0.3, 0.600, 5, "initial.pth", "fp32.pth")  # within: up
    assert search.next_level() == pytest.approx(0.4)
    search.record(0.4, 0.600, 3, "l40.pth", "initial.pth")  # within: up
    assert search.next_level() == pytest.approx(0.5)
    search.record(0.5, 0.580, 3, "l50.pth", "l40.pth")  # over: down, step 0.05
    assert search.next_level() == pytest.approx(0.45)
    search.record(0.45, 0.580, 3, "l45.pth", "l40.pth")  # over again: down, 0.40 was tried
    # 0.40 is taken as it was (within): up again with the step halved to 0.025.
    assert search.next_level() == pytest.approx(0.425)
    assert search.trials[-1]["repeated"] and search.trials[-1]["epochs"] == 0


ADAPTIVE_PRUNING = """\
accuracy_aware_training:
  mode: adaptive_compression_level
  params:
    maximal_absolute_accuracy_degradation: 1.0
    initial_training_phase_epochs: 1
    patience_epochs: 1
    maximal_total_epochs: 3
compression:
  algorithm: filter_pruning
  pruning_init: 0.2
  params: {schedule: baseline, pruning_target: 0.2}
"""


@pytest.mark.slow
def test_adaptive_pruning_ends_at_the_highest_level_within_budget(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path: Path
) -> None:
    """A budget every level meets (the tiny model's mAP is ~0): the level climbs 0.2 -> 0.3 ->
    0.4 until maximal_total_epochs, each level pruning the previous level's model further."""
    preset = tmp_path / "adaptive.yaml"
    preset.write_text(ADAPTIVE_PRUNING)
    work = tmp_path / "adaptive"
    report = tmp_path / "adaptive.json"
    result = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", str(preset),
         "--load-from", tiny_fp32["checkpoint"], "--work-dir", str(work),
         "--json", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    data = json.loads(report.read_text())
    aware = data["accuracy_aware"]
    assert aware["reference"] == pytest.approx(tiny_fp32["bbox_mAP"])
    assert [t["level"] for t in aware["trials"]] == pytest.approx([0.2, 0.3, 0.4])
    assert [Path(t["started_from"]).parent.name for t in aware["trials"][1:]] == [
        "initial_phase",
        "level_0.3000",
    ]
    assert aware["best"]["level"] == pytest.approx(0.4)
    assert "maximal_total_epochs" in aware["ended_because"]
    assert json.loads((work / "accuracy_aware.json").read_text()) == aware
    # The level is in the log and in the checkpoint the command ends with.
    assert data["checkpoint"] == str(work / "best_pruning_level_0.4000.pth")
    assert "pruning level 0.4" in result.output
    meta = torch.load(data["checkpoint"], weights_only=True)["meta"]["detcompress"]
    assert meta["structure"]["state"]["pruning_level"] == pytest.approx(0.4)
    filters = [data["statistics"]["filter_pruning"]["filters"]]
    for trial in aware["trials"][:2]:  # each level removed more filters than the one before
        stats = torch.load(trial["checkpoint"], weights_only=True)["meta"]["detcompress"]
        filters.insert(-1, stats["structure"]["statistics"]["filter_pruning"]["filters"])
    assert filters == sorted(filters, reverse=True) and len(set(filters)) == 3


def test_plan_says_the_search_and_its_epochs(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path: Path
) -> None:
    preset = tmp_path / "adaptive.yaml"
    preset.write_text(ADAPTIVE_PRUNING)
    result = runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", str(preset),
         "--load-from", tiny_fp32["checkpoint"], "--dry-run", "--work-dir", str(tmp_path / "w")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "schedule:    1 epochs (initial phase), then 1 per level, at most 3 in all" in (
        result.output
    )
    assert "adaptive_compression_level: the highest pruning level within it" in result.output
    assert not (tmp_path / "w").exists()


def test_an_earlier_search_is_refused_or_moved_aside_with_force(tmp_path: Path) -> None:
    from detcompress.api import _claim_trial_dirs
    from detcompress.errors import OutputExistsError

    level = tmp_path / "level_0.4000"
    level.mkdir()
    (level / "epoch_1.pth").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="holds an earlier level search"):
        _claim_trial_dirs(tmp_path, force=False)
    _claim_trial_dirs(tmp_path, force=True)
    assert not level.exists()
    assert [p.relative_to(tmp_path).parts[1:] for p in tmp_path.glob("previous_run_*/*/*")] == [
        ("level_0.4000", "epoch_1.pth")
    ]
