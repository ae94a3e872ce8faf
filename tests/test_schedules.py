"""Sparsity and filter-pruning schedules (plain functions of the epoch) and their bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detcompress.cli import app
from detcompress.compression.schedules import PruningSchedule, SparsitySchedule
from detcompress.config.presets import build_nncf_config
from detcompress.errors import PresetError

runner = CliRunner()


def _algo(compression: dict) -> object:
    return build_nncf_config({"compression": compression}, "test").algorithms[0]


def test_multistep_levels_change_exactly_at_the_steps() -> None:
    algo = _algo(
        {
            "algorithm": "magnitude_sparsity",
            "params": {
                "schedule": "multistep",
                "multistep_steps": [2, 4],
                "multistep_sparsity_levels": [0.3, 0.5, 0.7],
            },
        }
    )
    schedule = SparsitySchedule.of(algo)  # type: ignore[arg-type]
    levels = [schedule.level(e) for e in (0, 1, 1.99, 2, 3.5, 4, 10)]
    assert levels == [0.3, 0.3, 0.3, 0.5, 0.5, 0.7, 0.7]


@pytest.mark.parametrize("kind", ["polynomial", "exponential"])
def test_sparsity_grows_from_init_to_target_at_target_epoch(kind: str) -> None:
    algo = _algo(
        {
            "algorithm": "magnitude_sparsity",
            "sparsity_init": 0.1,
            "params": {"schedule": kind, "sparsity_target": 0.6, "sparsity_target_epoch": 5},
        }
    )
    schedule = SparsitySchedule.of(algo)  # type: ignore[arg-type]
    levels = [schedule.level(e) for e in range(8)]
    assert levels[0] == pytest.approx(0.1) and levels[5:] == [pytest.approx(0.6)] * 3
    assert all(a < b for a, b in itertools.pairwise(levels[:6]))
    # Per epoch unless update_per_optimizer_step: constant within an epoch.
    assert schedule.level(2.0) == schedule.level(2.9)


def test_update_per_optimizer_step_moves_within_an_epoch() -> None:
    algo = _algo(
        {
            "algorithm": "magnitude_sparsity",
            "params": {
                "schedule": "polynomial",
                "sparsity_target": 0.5,
                "sparsity_target_epoch": 4,
                "update_per_optimizer_step": True,
                "power": 1,
            },
        }
    )
    schedule = SparsitySchedule.of(algo)  # type: ignore[arg-type]
    assert schedule.level(1.0) < schedule.level(1.5) < schedule.level(2.0)
    assert schedule.level(2.0) == pytest.approx(0.25)


def test_pruning_schedules() -> None:
    exponential = PruningSchedule.of(
        _algo(  # type: ignore[arg-type]
            {
                "algorithm": "filter_pruning",
                "pruning_init": 0.1,
                "params": {"pruning_target": 0.3, "pruning_steps": 3, "num_init_steps": 1},
            }
        )
    )
    levels = [exponential.level(e) for e in range(6)]
    assert levels[:2] == [0.1, 0.1] and levels[4:] == [pytest.approx(0.3)] * 2
    # The kept fraction shrinks by the same factor every epoch.
    kept = [1 - v for v in levels[1:5]]
    ratios = [b / a for a, b in itertools.pairwise(kept)]
    assert ratios == [pytest.approx(ratios[0])] * 3
    assert exponential.last_change_epoch == 4
    baseline = PruningSchedule.of(
        _algo(  # type: ignore[arg-type]
            {
                "algorithm": "filter_pruning",
                "pruning_init": 0.2,
                "params": {"schedule": "baseline", "pruning_target": 0.4, "num_init_steps": 2},
            }
        )
    )
    assert [baseline.level(e) for e in range(4)] == [0.2, 0.2, 0.4, 0.4]


def test_exponential_with_bias_is_refused_with_the_valid_schedules() -> None:
    with pytest.raises(PresetError, match=r"valid: baseline, exponential$"):
        _algo({"algorithm": "filter_pruning", "params": {"schedule": "exponential_with_bias"}})


@pytest.mark.parametrize(
    ("compression", "expected"),
    [
        (
            {
                "algorithm": "filter_pruning",
                "pruning_init": 0.5,
                "params": {"pruning_target": 0.3},
            },
            "below pruning_init",
        ),
        (
            {
                "algorithm": "magnitude_sparsity",
                "sparsity_init": 0.6,
                "params": {"sparsity_target": 0.3},
            },
            "below sparsity_init",
        ),
    ],
)
def test_impossible_schedules_are_clear_errors(compression: dict, expected: str) -> None:
    algo = _algo(compression)
    of = PruningSchedule.of if compression["algorithm"] == "filter_pruning" else SparsitySchedule.of
    with pytest.raises(PresetError, match=expected):
        of(algo)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("preset", "option", "expected"),
    [
        ("filter_pruning", "nncf_config.compression.params.pruning_target=1.5",
         "pruning_target' is 1.5"),
        ("filter_pruning", "nncf_config.compression.params.schedule=cosine",
         "valid: baseline, exponential"),
        ("filter_pruning", "nncf_config.compression.params.pruning_flops_target=0.5",
         "pruning_flops_target"),
        ("int8", "nncf_config.compression.weights.ignored_scopes=['{re}.*']",
         "'quantization': weights.ignored_scopes is not supported with NNCF 3"),
        ("int8", "nncf_config.compression.activations.target_scopes=['{re}.*']",
         "activations.target_scopes is not supported"),
    ],
)  # fmt: skip
def test_bad_settings_fail_before_anything_runs(
    tiny_workspace: Path, tmp_path: Path, preset: str, option: str, expected: str
) -> None:
    result = runner.invoke(
        app,
        [
            "compress",
            str(tiny_workspace / "configs" / "demo.py"),
            "--preset",
            preset,
            "--work-dir",
            str(tmp_path / "w"),
            "--cfg-options",
            option,
        ],
    )
    assert result.exit_code == 2, result.output
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()
