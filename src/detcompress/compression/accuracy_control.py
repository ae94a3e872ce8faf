"""Post-training quantization within an mAP budget (`compress --max-iters 0
--max-accuracy-drop D`): what NNCF's accuracy restorer does for OpenVINO models, here for a
PyTorch detector, so that the result can still be fine-tuned.

1. The quantizers are grouped by the operations they serve (`nncf_adapter.quantizer_groups`).
2. Each group is switched off in turn and ranked by how much of the quantized model's output
   error (against the float model, on a few validation images) that removes: one forward of a
   few images per group, so the ranking grows linearly with the number of groups.
3. The shortest prefix of that ranking that brings the validation mAP within the budget is found
   with the metric itself (prefixes of 1, 2, 4, ... groups, then bisection: a logarithmic number
   of validations).
   Each prefix is validated on the model as it will be saved: re-quantized with those groups'
   operations in `ignored_scopes` (so the stored nncf_config rebuilds the same model).

No NNCF call here: the groups come in with their on/off switch, the validation as a callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from detcompress.config.accuracy_aware import METRIC, Budget

# Validation images whose outputs rank the groups (the first ones of the validation set).
RANKING_IMAGES = 16


class Group(Protocol):
    operations: list[str]
    hooks: list[str]

    @property
    def weight_quantizers(self) -> int: ...

    @property
    def quantizers(self) -> int: ...

    def set_enabled(self, enabled: bool) -> None: ...


def points(drop: float) -> float:
    return round(drop * 100, 2)


@dataclass
class RankedGroup:
    operations: list[str]
    quantizers: int
    weight_quantizers: int
    error_removed: float  # share of the quantized model's output error gone with it in float
    # Validation mAP with only this group in float (its quantizers switched off), for the top
    # of the ranking: the mAP cost of quantizing it, as a user reads it.
    map_in_float: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            **(
                {"map_with_group_in_float": self.map_in_float}
                if self.map_in_float is not None
                else {}
            ),
            "quantizers": self.quantizers,
            "weight_quantizers": self.weight_quantizers,
            "error_removed": round(self.error_removed, 4),
        }


@dataclass
class SearchResult:
    budget: Budget
    reference: float  # the float model's mAP
    quantized: float  # every group quantized
    ranking: list[RankedGroup]
    kept_in_float: int = 0  # the first groups of the ranking
    # (groups in float, mAP) for every prefix validated, in the order validated.
    steps: list[tuple[int, float]] = field(default_factory=list)
    within_budget: bool = True
    seconds: float = 0.0

    @property
    def operations_in_float(self) -> list[str]:
        return sorted(op for group in self.ranking[: self.kept_in_float] for op in group.operations)

    def drop(self, value: float) -> float:
        return self.reference - value

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": METRIC,
            "budget": self.budget.to_json(),
            "allowed_drop_points": round(self.budget.allowed(self.reference) * 100, 6),
            "reference": self.reference,
            "quantized": self.quantized,
            "groups_in_float": self.kept_in_float,
            "operations_in_float": self.operations_in_float,
            "within_budget": self.within_budget,
            "steps": [{"groups_in_float": k, METRIC: value} for k, value in self.steps],
            "search_seconds": round(self.seconds, 1),
            "ranking": [group.to_json() for group in self.ranking],
        }

    def lines(self, top: int = 10) -> list[str]:
        allowed = self.budget.allowed(self.reference)
        out = [
            f"accuracy control: reference (float) {METRIC} {self.reference:.4f}, all quantized "
            f"{self.quantized:.4f} (drop {points(self.drop(self.quantized)):.2f} points; budget "
            + (
                f"{self.budget.describe()} = {points(allowed):.2f} points)"
                if self.budget.relative
                else f"{points(allowed):.2f} points)"
            ),
        ]
        if self.steps:
            tried = ", ".join(f"{k} group(s) {value:.4f}" for k, value in self.steps)
            out.append(f"accuracy control: validated with the top-ranked groups in float: {tried}")
        if not self.ranking:
            return out
        out.append(
            "sensitivity (quantizer groups ranked by the output error each removes; mAP with "
            "only that group in float, quantizers switched off):"
        )
        out.append(
            f"  {'rank':>4}  {'error removed':>13}  {'mAP in float':>12}  {'quantizers':>10}  "
            "operations"
        )
        for index, group in enumerate(self.ranking[:top], 1):
            mark = "*" if index <= self.kept_in_float else " "
            names = ", ".join(group.operations[:3]) + (
                f", ... ({len(group.operations)} in all)" if len(group.operations) > 3 else ""
            )
            in_float = (
                f"{group.map_in_float:.4f} ({points(group.map_in_float - self.quantized):+.1f})"
                if group.map_in_float is not None
                else "-"
            )
            out.append(
                f"  {index:>3}{mark}  {group.error_removed:>12.1%}  {in_float:>12}  "
                f"{group.quantizers:>10}  {names}"
            )
        if len(self.ranking) > top:
            out.append(f"  ... {len(self.ranking) - top} more groups (all in the JSON report)")
        if self.kept_in_float:
            out.append(
                f"accuracy control: {self.kept_in_float} group(s) (marked *) kept in float: "
                f"{len(self.operations_in_float)} operations added to the quantization's "
                "ignored_scopes"
            )
        return out


def output_error(outputs: Any, reference: Any) -> float:
    """Relative squared error of a detector's raw outputs (tensor mode: nested tuples / lists
    of tensors): sum over tensors of mean((q - f)^2) / mean(f^2)."""
    pairs = list(zip(_tensors(outputs), _tensors(reference), strict=True))
    total = 0.0
    for q, f in pairs:
        scale = float(f.float().pow(2).mean()) or 1.0
        total += float((q.float() - f.float()).pow(2).mean()) / scale
    return total


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in _tensors(value[key])]
    return []


def rank_groups(
    groups: Sequence[Group], model: torch.nn.Module, inputs: list[Any], reference: list[Any]
) -> list[RankedGroup]:
    """Each group switched off in turn; ranked by the share of the output error it removes.
    Leaves every group switched on."""

    @torch.no_grad()
    def error() -> float:
        return sum(output_error(model(x), ref) for x, ref in zip(inputs, reference, strict=True))

    was_training = model.training
    model.eval()
    base = error() or 1.0
    ranked = []
    for group in groups:
        group.set_enabled(False)
        removed = (base - error()) / base
        group.set_enabled(True)
        ranked.append(
            RankedGroup(list(group.operations), group.quantizers, group.weight_quantizers, removed)
        )
    model.train(was_training)
    ranked.sort(key=lambda info: -info.error_removed)
    return ranked


def measure_map_costs(
    ranking: list[RankedGroup],
    groups: Sequence[Group],
    validate: Callable[[], float],
    top: int = 10,
) -> None:
    """The validation mAP with each of the `top` ranked groups alone in float (its quantizers
    switched off, the rest quantized): what each costs in mAP. Switching off overestimates
    what re-quantizing without the group gives (bias correction and BN adaptation are not run
    again), so the search validates re-quantized prefixes; this is the report for users."""
    by_operations = {tuple(group.operations): group for group in groups}
    for ranked in ranking[:top]:
        group = by_operations[tuple(ranked.operations)]
        group.set_enabled(False)
        try:
            ranked.map_in_float = validate()
        finally:
            group.set_enabled(True)


def search(
    ranking: list[RankedGroup],
    evaluate: Callable[[int], float],
    reference: float,
    budget: Budget,
    report: Callable[[str], None] = lambda line: None,
) -> SearchResult:
    """The fewest top-ranked groups to keep in float for the validation mAP to be within
    `budget` of `reference`. `evaluate(k)` is the mAP of the model with the first k groups of
    the ranking in float (k = 0: all quantized), as it will be saved: each prefix is validated on
    the real model, so the ranking being a proxy costs validations, never the budget."""
    start = time.perf_counter()
    allowed = budget.allowed(reference)
    quantized = evaluate(0)
    report(
        f"accuracy control: float {METRIC} {reference:.4f}, all quantized {quantized:.4f} (drop "
        f"{points(reference - quantized):.2f} points, budget {points(allowed):.2f})"
    )
    result = SearchResult(budget, reference, quantized, ranking)
    if reference - quantized <= allowed or not ranking:
        result.within_budget = reference - quantized <= allowed
        result.seconds = time.perf_counter() - start
        return result

    def within(count: int) -> bool:
        value = evaluate(count)
        result.steps.append((count, value))
        report(
            f"accuracy control: {count} group(s) in float: {METRIC} {value:.4f} (drop "
            f"{points(reference - value):.2f} points)"
        )
        return reference - value <= allowed

    # Prefixes of 1, 2, 4, ... groups until one is within budget, then bisection below it.
    failing, passing = 0, None
    count = 1
    while count < len(ranking):
        if within(count):
            passing = count
            break
        failing, count = count, count * 2
    if passing is None:
        # Every group in float: if that misses too, no shorter prefix is worth validating.
        result.kept_in_float = len(ranking)
        result.within_budget = within(len(ranking))
        if not result.within_budget:
            result.seconds = time.perf_counter() - start
            return result
        passing = len(ranking)
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if within(middle):
            passing = middle
        else:
            failing = middle
    result.kept_in_float = passing
    result.seconds = time.perf_counter() - start
    return result
