"""NNCF 2's `adaptive_compression_level`: the highest filter-pruning level whose fine-tuned model
stays within the mAP budget, found with NNCF 2's step rule ("uniform decrease"):

- an initial phase trains `initial_training_phase_epochs` with the config's own schedule, to its
  `pruning_target`, and is validated;
- then the level moves by `initial_compression_rate_step`, up after a level within the budget,
  down after one outside it; when the direction changes the step is multiplied by
  `compression_rate_step_reduction_factor`; the search ends when the step falls below
  `minimal_compression_rate_step`, the level leaves [0.05, 0.95] (NNCF 2's bounds), or
  `maximal_total_epochs` have been trained;
- each level is fine-tuned for `patience_epochs` and validated once at its end.

Filters are removed physically (torch-pruning), so a level is never lowered in place: a level
starts from the model of the highest level already accepted below it (pruned further), or from
the uncompressed model when none is. This module is the rule as plain data; `api` runs the
trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detcompress.config.accuracy_aware import METRIC, Budget, drop_points

# NNCF 2's bounds of the compression rate in adaptive_compression_level.
MINIMAL_LEVEL = 0.05
MAXIMAL_LEVEL = 0.95


@dataclass(frozen=True)
class SearchSettings:
    """NNCF 2's parameters, with NNCF 2's defaults."""

    initial_training_phase_epochs: int = 5
    patience_epochs: int = 3
    initial_step: float = 0.1
    step_reduction_factor: float = 0.5
    minimal_step: float = 0.025
    maximal_total_epochs: int = 10000

    @classmethod
    def of(cls, params: dict[str, Any]) -> SearchSettings:
        defaults = cls()
        return cls(
            int(
                params.get("initial_training_phase_epochs", defaults.initial_training_phase_epochs)
            ),
            int(params.get("patience_epochs", defaults.patience_epochs)),
            float(params.get("initial_compression_rate_step", defaults.initial_step)),
            float(
                params.get("compression_rate_step_reduction_factor", defaults.step_reduction_factor)
            ),
            float(params.get("minimal_compression_rate_step", defaults.minimal_step)),
            int(params.get("maximal_total_epochs", defaults.maximal_total_epochs)),
        )


@dataclass
class LevelSearch:
    reference: float
    budget: Budget
    settings: SearchSettings
    trials: list[dict[str, Any]] = field(default_factory=list)
    step: float = 0.0
    last_direction: int = 0  # +1 up, -1 down, 0 before the first move
    ended_because: str = ""

    def __post_init__(self) -> None:
        if not self.step:
            self.step = self.settings.initial_step

    @property
    def allowed(self) -> float:
        return self.budget.allowed(self.reference)

    @property
    def epochs_trained(self) -> int:
        return sum(int(t["epochs"]) for t in self.trials)

    def record(
        self, level: float, value: float, epochs: int, checkpoint: str, start: str
    ) -> dict[str, Any]:
        drop = self.reference - value
        entry = {
            "level": round(level, 6),
            METRIC: value,
            "drop_points": drop_points(drop),
            "within_budget": drop <= self.allowed + 1e-12,
            "epochs": epochs,
            "checkpoint": checkpoint,
            "started_from": start,
        }
        self.trials.append(entry)
        return entry

    def next_level(self) -> float | None:
        """The level to try after the last trial, or None when the search is over (the reason in
        `ended_because`)."""
        last = self.trials[-1]
        direction = 1 if last["within_budget"] else -1
        if self.last_direction and direction != self.last_direction:
            self.step *= self.settings.step_reduction_factor
        self.last_direction = direction
        if self.step < self.settings.minimal_step - 1e-12:
            self.ended_because = (
                f"the level step {self.step:.4f} fell below minimal_compression_rate_step "
                f"{self.settings.minimal_step:g}"
            )
            return None
        if self.epochs_trained + self.settings.patience_epochs > self.settings.maximal_total_epochs:
            self.ended_because = f"maximal_total_epochs ({self.settings.maximal_total_epochs})"
            return None
        level = round(last["level"] + direction * self.step, 6)
        if level > MAXIMAL_LEVEL:
            self.ended_because = (
                f"the next level {level:g} is above NNCF 2's maximum {MAXIMAL_LEVEL}"
            )
            return None
        if level < MINIMAL_LEVEL:
            self.ended_because = (
                f"the next level {level:g} is below NNCF 2's minimum {MINIMAL_LEVEL}"
            )
            return None
        if any(abs(t["level"] - level) < 1e-9 for t in self.trials):
            # Tried already (the step cannot shrink to it again without a direction change).
            return self._repeat(level)
        return level

    def _repeat(self, level: float) -> float | None:
        tried = next(t for t in self.trials if abs(t["level"] - level) < 1e-9)
        self.trials.append({**tried, "repeated": True, "epochs": 0})
        return self.next_level()

    def start_for(self, level: float) -> dict[str, Any] | None:
        """The accepted trial a new level starts from: the highest within-budget level below
        it (its model is pruned further), or None (the uncompressed model)."""
        below = [
            t
            for t in self.trials
            if t["within_budget"] and t["level"] < level and not t.get("repeated")
        ]
        return max(below, key=lambda t: t["level"]) if below else None

    @property
    def best(self) -> dict[str, Any] | None:
        """The highest level within the budget (NNCF 2's answer)."""
        accepted = [t for t in self.trials if t["within_budget"] and not t.get("repeated")]
        return max(accepted, key=lambda t: t["level"]) if accepted else None

    def verdict(self) -> str:
        best = self.best
        allowed = round(self.allowed * 100, 2)
        if best is None:
            return (
                f"no pruning level tried stayed within the budget of {allowed:.2f} points "
                f"({self.ended_because})"
            )
        return (
            f"pruning level {best['level']:g}: {METRIC} {best[METRIC]:.4f}, "
            f"{best['drop_points']:.2f} points below the uncompressed {self.reference:.4f}, "
            f"within the budget of {allowed:.2f} (search ended: {self.ended_because})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "adaptive_compression_level",
            "metric": METRIC,
            "reference": self.reference,
            "budget": self.budget.to_json(),
            "allowed_drop_points": round(self.allowed * 100, 6),
            "settings": vars(self.settings),
            "trials": self.trials,
            "best": self.best,
            "within_budget": self.best is not None,
            "ended_because": self.ended_because,
            "epochs_trained": self.epochs_trained,
        }
