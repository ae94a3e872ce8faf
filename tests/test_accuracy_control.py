"""Post-training quantization within an mAP budget (`compress --max-accuracy-drop`): the
budget's parsing, the search over ranked quantizer groups, the groups against NNCF's own
ignored_scopes on the tiny YOLOX, and the command end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST_INIT
from detcompress.cli import app
from detcompress.compression.accuracy_control import (
    Budget,
    measure_map_costs,
    output_error,
    rank_groups,
    search,
)
from detcompress.errors import DetcompressError

runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# Budget


def test_budget_in_points_and_percent() -> None:
    assert Budget.parse("0.5").allowed(0.6) == pytest.approx(0.005)
    assert Budget.parse("1%").allowed(0.6) == pytest.approx(0.006)
    assert Budget.parse("0").allowed(0.6) == 0.0


@pytest.mark.parametrize("text", ["abc", "-1", "0.5pt", "100%", ""])
def test_budget_refuses_other_text(text: str) -> None:
    with pytest.raises(DetcompressError, match="--max-accuracy-drop is"):
        Budget.parse(text)


# ---------------------------------------------------------------------------------------------
# The search, on groups whose cost is known


class _Group:
    """A quantizer group that adds `noise` to the model's output while enabled."""

    def __init__(self, name: str, noise: float) -> None:
        self.operations = [name]
        self.hooks = [f"pre_hooks.{name}__1.0"]
        self.noise = noise
        self.enabled = True

    @property
    def weight_quantizers(self) -> int:
        return 1

    @property
    def quantizers(self) -> int:
        return 1

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled


class _Model(torch.nn.Module):
    def __init__(self, groups: list[_Group]) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor]]:
        return ([x + sum(g.noise for g in self.groups if g.enabled)],)


def _ranked(noises: list[float]) -> tuple[list[_Group], Any]:
    groups = [_Group(f"op{i}", n) for i, n in enumerate(noises)]
    return groups, rank_groups(groups, _Model(groups), [torch.ones(1, 4)], [torch.ones(1, 4)])


def test_search_keeps_the_fewest_costly_groups_in_float() -> None:
    noises = [0.01, 0.5, 0.02, 0.3, 0.0, 0.2, 0.01, 0.05, 0.03, 0.04]
    groups, ranking = _ranked(noises)
    # Ranked by the output error each removes: the noisiest first; every group left on.
    assert [r.operations[0] for r in ranking[:4]] == ["op1", "op3", "op5", "op7"]
    assert all(g.enabled for g in groups)
    assert ranking[0].error_removed > ranking[1].error_removed > ranking[-1].error_removed
    evaluated: list[int] = []

    def evaluate(count: int) -> float:  # mAP falls by the noise left quantized
        evaluated.append(count)
        floated = {op for r in ranking[:count] for op in r.operations}
        return 0.6 - sum(g.noise for g in groups if g.operations[0] not in floated) / 10

    result = search(ranking, evaluate, 0.6, Budget.parse("1"))
    # 0.5 + 0.3 + 0.2 in float leaves 0.16 of noise = 1.6 points > 1; with op7 too, 1.1; with
    # op9, 0.7 points: five groups are the fewest.
    assert result.kept_in_float == 5 and result.within_budget
    assert sorted(result.operations_in_float) == ["op1", "op3", "op5", "op7", "op9"]
    # Logarithmic: the all-quantized validation, doublings, then bisection.
    assert evaluated[0] == 0 and len(set(evaluated)) == len(evaluated)
    assert len(evaluated) <= 2 + 2 * math.ceil(math.log2(len(groups)))


def test_map_cost_of_each_top_group_alone_in_float() -> None:
    groups, ranking = _ranked([0.1, 0.4, 0.2])

    def validate() -> float:  # the mAP falls by the noise of each enabled group
        return 0.6 - sum(g.noise for g in groups if g.enabled) / 10

    measure_map_costs(ranking, groups, validate, top=2)
    # Ranked by error removed: op1 (0.4), then op2 (0.2); op0 is not measured.
    assert [r.operations for r in ranking] == [["op1"], ["op2"], ["op0"]]
    assert ranking[0].map_in_float == pytest.approx(0.6 - 0.03)
    assert ranking[1].map_in_float == pytest.approx(0.6 - 0.05)
    assert ranking[2].map_in_float is None and "map_with_group_in_float" not in ranking[2].to_json()
    assert all(g.enabled for g in groups)  # left as found


def test_search_within_budget_at_once_keeps_everything_quantized() -> None:
    _, ranking = _ranked([0.1, 0.2])
    result = search(ranking, lambda count: 0.6, 0.6, Budget.parse("0"))
    assert result.kept_in_float == 0 and result.steps == [] and result.within_budget
    assert [r.operations for r in result.ranking] == [["op1"], ["op0"]]  # still reported


def test_search_says_when_even_all_groups_in_float_miss_the_budget() -> None:
    _, ranking = _ranked([0.1, 0.2, 0.3, 0.05, 0.01, 0.02])
    evaluated: list[int] = []
    result = search(ranking, lambda count: evaluated.append(count) or 0.5, 0.6, Budget.parse("1"))
    assert not result.within_budget and result.kept_in_float == 6
    assert evaluated == [0, 1, 2, 4, 6]  # no bisection below a failing "all in float"


def test_output_error_is_relative_and_zero_for_equal_outputs() -> None:
    f = ([torch.full((2, 3), 2.0)], [torch.ones(4)])
    assert output_error(f, f) == 0.0
    q = ([torch.full((2, 3), 3.0)], [torch.ones(4)])
    assert output_error(q, f) == pytest.approx(1 / 4)


# ---------------------------------------------------------------------------------------------
# The tiny YOLOX: groups against NNCF's own ignored_scopes


@pytest.fixture(scope="module")
def tiny_quantized(tiny_workspace: Path, tiny_fp32: dict) -> dict[str, Any]:
    from detcompress import api
    from detcompress.config.mmdet_config import load_config
    from detcompress.model import detector
    from detcompress.model.checkpoint import load_checkpoint
    from detcompress.train.runner import prepare_cfg

    loaded = load_config(tiny_workspace / "configs" / "demo.py", "int8", list(FAST_INIT))
    prepare_cfg(loaded.cfg, tiny_workspace / "unused", 0, None)
    model = detector.build_detector(loaded.cfg)
    checkpoint = Path(tiny_fp32["checkpoint"])
    detector.load_weights(model, load_checkpoint(checkpoint), checkpoint, False)
    model.eval()
    quantized, _ = api.initialize_compression(loaded.cfg, model, loaded.nncf)
    return {"cfg": loaded.cfg, "nncf": loaded.nncf, "model": model, "quantized": quantized}


@pytest.mark.slow
def test_groups_are_what_ignored_scopes_remove(tiny_quantized: dict) -> None:
    """Every quantizer is in one group; keeping a group's operations in float through NNCF's
    ignored_scopes removes exactly that group's quantizers."""
    from detcompress import api
    from detcompress.compression import nncf_adapter
    from detcompress.config.presets import with_ignored_operations

    quantized, model = tiny_quantized["quantized"], tiny_quantized["model"]
    groups = nncf_adapter.quantizer_groups(quantized, model, torch.zeros(1, 3, 96, 96))
    all_quantizers = {id(m) for _, m in nncf_adapter.quantizer_modules(quantized)}
    in_groups = [id(m) for g in groups for m in g.modules]
    assert sorted(in_groups) == sorted(all_quantizers)  # each in exactly one group
    hooks = {h for h, _ in nncf_adapter.quantizer_modules(quantized)}
    # The largest group (quantizers shared by a concat's inputs, one from an upsampling) and one
    # with a residual add.
    largest = max(groups, key=lambda g: len(g.hooks))
    assert any("interpolate" in op for op in largest.operations)
    residual = next(g for g in groups if any(op.endswith("/add/0") for op in g.operations))
    for group in (largest, residual):
        config = with_ignored_operations(tiny_quantized["nncf"], "quantization", group.operations)
        assert set(group.operations) <= set(config.quantization.ignored_scopes)
        requantized, _ = api.initialize_compression(tiny_quantized["cfg"], model, config)
        after = {h for h, _ in nncf_adapter.quantizer_modules(requantized)}
        assert hooks - after == set(group.hooks), group.operations
        assert after <= hooks  # no quantizer moved elsewhere (e.g. onto an upsampling's input)
        weights_before = nncf_adapter.count_quantizers(quantized)[0]
        weights_after = nncf_adapter.count_quantizers(requantized)[0]
        assert weights_before - weights_after == group.weight_quantizers


# ---------------------------------------------------------------------------------------------
# The command


def _budgeted(
    tiny_workspace: Path, load_from: str, work_dir: Path, *extra: str, preset: str = "int8"
) -> Any:
    options = ["--cfg-options", *FAST_INIT] if preset == "int8" else []
    return runner.invoke(
        app,
        ["compress", str(tiny_workspace / "configs" / "demo.py"), "--preset", preset,
         "--max-iters", "0", "--load-from", load_from, "--work-dir", str(work_dir),
         *extra, *options],
    )  # fmt: skip


@pytest.mark.slow
def test_budgeted_ptq_end_to_end(tiny_workspace: Path, tiny_fp32: dict, tmp_path: Path) -> None:
    report = tmp_path / "ptq.json"
    work_dir = tmp_path / "ptq"
    result = _budgeted(
        tiny_workspace, tiny_fp32["checkpoint"], work_dir, "--max-accuracy-drop", "0.5",
        "--json", str(report),
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    data = json.loads(report.read_text())
    control = data["accuracy_control"]
    # The reference is the float model's validation mAP: what the FP32 run reported.
    assert control["reference"] == pytest.approx(tiny_fp32["bbox_mAP"])
    assert control["final"] == pytest.approx(data["bbox_mAP"])
    assert control["allowed_drop_points"] == 0.5
    # What the search validated for the chosen prefix is what the Runner validated at the end.
    chosen = {s["groups_in_float"]: s["bbox_mAP"] for s in control["steps"]}
    assert control["final"] == pytest.approx(
        chosen.get(control["groups_in_float"], control["quantized"])
    )
    if control["within_budget"]:
        assert control["final_within_budget"]
    # Every quantizer group is ranked, each with its share of the output error.
    ranking = control["ranking"]
    quantizers = data["statistics"]["quantization"]
    assert sum(g["quantizers"] for g in ranking) == (
        quantizers["weight_quantizers"] + quantizers["activation_quantizers"]
    )
    assert all(0 <= g["weight_quantizers"] <= g["quantizers"] for g in ranking)
    errors = [g["error_removed"] for g in ranking]
    assert errors == sorted(errors, reverse=True)
    # The top of the ranking carries its mAP with the group alone in float.
    measured = [g for g in ranking if "map_with_group_in_float" in g]
    assert measured == ranking[: min(10, len(ranking))]
    assert all(0.0 <= g["map_with_group_in_float"] <= 1.0 for g in measured)
    assert json.loads((work_dir / "accuracy_control.json").read_text())["ranking"] == ranking
    assert "sensitivity (quantizer groups ranked" in result.output
    # The checkpoint keeps the search and the nncf_config that rebuilds the model.
    checkpoint = torch.load(data["checkpoint"], weights_only=True)
    meta = checkpoint["meta"]["detcompress"]
    assert meta["compression_summary"]["accuracy_control"]["reference"] == control["reference"]
    ignored = meta["nncf_config"]["compression"].get("ignored_scopes", [])
    assert sorted(ignored) == sorted(control["operations_in_float"])


@pytest.mark.parametrize(
    ("preset", "drop", "message"),
    [
        ("int8", "lots", "--max-accuracy-drop is 'lots'"),
        ("int8", "150%", "a percentage must be below 100%"),
        ("int8", "150", "mAP points are at most 100"),
        ("filter_pruning", "0.5", "quantizes only"),
    ],
)
def test_budget_bad_input_one_line(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path: Path, preset: str, drop: str, message: str
) -> None:
    result = _budgeted(
        tiny_workspace, tiny_fp32["checkpoint"], tmp_path / "w", "--max-accuracy-drop", drop,
        preset=preset,
    )  # fmt: skip
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "w").exists()


def test_budget_refuses_a_compressed_start(
    tiny_workspace: Path, tiny_ptq: Path, tmp_path: Path
) -> None:
    result = _budgeted(tiny_workspace, str(tiny_ptq), tmp_path / "w", "--max-accuracy-drop", "0.5")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "already compressed" in lines[0] and str(tiny_ptq) in lines[0]
    assert not (tmp_path / "w").exists()
