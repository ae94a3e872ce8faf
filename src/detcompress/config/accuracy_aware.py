"""The mAP budget of an accuracy-aware run: `--max-accuracy-drop` and NNCF 2's
`accuracy_aware_training` section, as one typed object.

NNCF 2's meaning is kept: `maximal_relative_accuracy_degradation` is a percentage of the
uncompressed model's metric (default 1.0 when no degradation is given),
`maximal_absolute_accuracy_degradation` is in the metric's own unit, which for mmdet's bbox mAP
is a fraction (0.005 = 0.5 mAP points), and `maximal_total_epochs` bounds the fine-tuning.
`--max-accuracy-drop` is written in mAP points (or a percentage) and becomes that section, so
that the checkpoint's nncf_config carries the budget for `resume`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from detcompress.errors import DetcompressError, PresetError

# The metric every budget is measured on (mmdet's CocoMetric, a fraction in [0, 1]).
METRIC = "bbox_mAP"
SECTION = "accuracy_aware_training"
MODES = ("early_exit", "adaptive_compression_level")
RELATIVE = "maximal_relative_accuracy_degradation"
ABSOLUTE = "maximal_absolute_accuracy_degradation"
TOTAL_EPOCHS = "maximal_total_epochs"
# NNCF 2's default when neither degradation is given: 1% of the reference.
DEFAULT_RELATIVE_PERCENT = 1.0
# The parameters each mode takes (NNCF 2's schema has one parameter set per mode).
EARLY_EXIT_PARAMS = (RELATIVE, ABSOLUTE, TOTAL_EPOCHS)
ADAPTIVE_PARAMS = (
    *EARLY_EXIT_PARAMS,
    "initial_training_phase_epochs",
    "patience_epochs",
    "initial_compression_rate_step",
    "compression_rate_step_reduction_factor",
    "minimal_compression_rate_step",
)
PARAMS_OF_MODE = {"early_exit": EARLY_EXIT_PARAMS, "adaptive_compression_level": ADAPTIVE_PARAMS}


def drop_points(fraction: float) -> float:
    """An mAP difference (mmdet's fraction) in mAP points, as the accuracy-aware reports give it."""
    return round(fraction * 100, 4)


@dataclass(frozen=True)
class Budget:
    """The largest mAP drop allowed: absolute, in mAP points (0.5 = 0.005 of mmdet's fraction),
    or relative to the reference (`1%`)."""

    value: float
    relative: bool

    @classmethod
    def parse(cls, text: str, option: str = "--max-accuracy-drop") -> Budget:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)\s*", text)
        if match is None:
            raise DetcompressError(
                f"{option} is '{text}'; give mAP points (e.g. 0.5) or a percentage of the "
                "reference mAP (e.g. 1%)"
            )
        value = float(match.group(1))
        if match.group(2) and value >= 100:
            raise DetcompressError(f"{option} is '{text}'; a percentage must be below 100%")
        if value > 100:
            raise DetcompressError(f"{option} is '{text}'; mAP points are at most 100")
        return cls(value, relative=bool(match.group(2)))

    def allowed(self, reference: float) -> float:
        """The allowed drop as a fraction of mAP (mmdet's unit)."""
        return reference * self.value / 100 if self.relative else self.value / 100

    def describe(self) -> str:
        if self.relative:
            return f"{self.value:g}% of the reference mAP"
        return f"{self.value:g} points"

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "relative": self.relative}

    def as_params(self) -> dict[str, float]:
        """The budget as NNCF 2's degradation parameter."""
        if self.relative:
            return {RELATIVE: self.value}
        return {ABSOLUTE: round(self.value / 100, 10)}


@dataclass(frozen=True)
class AccuracyAwareTraining:
    mode: str
    budget: Budget
    maximal_total_epochs: int | None = None
    # The section's parameters as given (adaptive_compression_level's search reads them).
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, section: dict[str, Any], source: str) -> AccuracyAwareTraining:
        """The section as validated by the schema (types, known keys); the rules across keys
        are checked here."""
        mode = section.get("mode", "early_exit")
        params = section.get("params") or {}
        path = f"{SECTION}.params"
        allowed = PARAMS_OF_MODE[mode]
        for key in params:
            if key not in allowed:
                raise PresetError(
                    f"{source}: '{path}.{key}' is a parameter of another mode than '{mode}'; "
                    f"valid with {mode}: {', '.join(allowed)}"
                )
        if RELATIVE in params and ABSOLUTE in params:
            raise PresetError(f"{source}: '{path}' sets both {RELATIVE} and {ABSOLUTE}; give one")
        if ABSOLUTE in params:
            budget = Budget(round(float(params[ABSOLUTE]) * 100, 8), relative=False)
        else:
            percent = float(params.get(RELATIVE, DEFAULT_RELATIVE_PERCENT))
            if percent >= 100:
                raise PresetError(
                    f"{source}: '{path}.{RELATIVE}' is {percent}; it must be below 100"
                )
            budget = Budget(percent, relative=True)
        epochs = params.get(TOTAL_EPOCHS)
        return cls(mode, budget, int(epochs) if epochs is not None else None, dict(params))


def with_budget(raw: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """The nncf_config `raw` with `budget` as its accuracy-aware section's degradation (an
    early_exit section is added when there is none; its other parameters are kept)."""
    section = dict(raw.get(SECTION) or {"mode": "early_exit"})
    params = {
        k: v for k, v in (section.get("params") or {}).items() if k not in (RELATIVE, ABSOLUTE)
    }
    section["params"] = {**budget.as_params(), **params}
    return {**raw, SECTION: section}
