"""NNCF 2's `early_exit` accuracy-aware training on mmengine's Runner: the compressed model is
validated after initialization and at every validation of the schedule; training stops at the
first validation that is within the mAP budget of the uncompressed model (the reference) with
every compression schedule at its target. The best fully compressed validation so far is kept as
`best_coco_bbox_mAP_iter_N.pth` (or `_epoch_N`), the checkpoint a user ships.

The reference is measured once, before compression (`api.compress`), and travels in the
checkpoints' meta with the validations so far, so that `resume` continues the same run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook

from detcompress import console
from detcompress.config.accuracy_aware import METRIC, Budget
from detcompress.config.accuracy_aware import drop_points as points

REPORT_FILE = "accuracy_aware.json"
META_KEY = "accuracy_aware"


@dataclass
class EarlyExitState:
    """The reference, the budget and every validation of the run; plain data (checkpoint meta)."""

    reference: float
    budget: Budget
    validations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the best fully compressed validation, with its file
    stopped: dict[str, Any] | None = None  # the validation within budget that ended the run

    @property
    def allowed(self) -> float:
        """The allowed drop, as a fraction of mAP."""
        return self.budget.allowed(self.reference)

    def record(
        self, iteration: int, epoch: int, value: float, fully_compressed: bool, waiting: str = ""
    ) -> dict[str, Any]:
        """One validation; says whether it is the new best and whether the run may stop."""
        drop = self.reference - value
        entry = {
            "iteration": iteration,
            "epoch": epoch,
            METRIC: value,
            "drop_points": points(drop),
            "fully_compressed": fully_compressed,
            **({"waiting_for": waiting} if waiting else {}),
        }
        self.validations.append(entry)
        # Only a model with every schedule at its target may be the answer (NNCF 2's rule).
        entry["best"] = fully_compressed and (self.best is None or value > self.best[METRIC])
        entry["within_budget"] = fully_compressed and drop <= self.allowed + 1e-12
        if entry["best"]:
            self.best = dict(entry)
        if entry["within_budget"]:
            self.stopped = dict(entry)
        return entry

    def verdict(self) -> str:
        allowed = points(self.allowed)
        if self.stopped is not None:
            return (
                f"stopped at iteration {self.stopped['iteration']}: {METRIC} "
                f"{self.stopped[METRIC]:.4f}, {self.stopped['drop_points']:.2f} points below the "
                f"uncompressed {self.reference:.4f}, within the budget of {allowed:.2f}"
            )
        if self.best is None:
            return (
                "the run ended before every compression schedule reached its target "
                f"({self.validations[-1].get('waiting_for', '?') if self.validations else '?'}); "
                "no model could be checked against the budget: train longer"
            )
        missed = self.best["drop_points"] - allowed
        return (
            f"the budget of {allowed:.2f} points was NOT reached: the best fully compressed "
            f"validation (iteration {self.best['iteration']}, {METRIC} {self.best[METRIC]:.4f}) "
            f"is {self.best['drop_points']:.2f} points below the uncompressed "
            f"{self.reference:.4f}, missed by {missed:.2f}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "early_exit",
            "metric": METRIC,
            "reference": self.reference,
            "budget": self.budget.to_json(),
            "allowed_drop_points": points(self.allowed),
            "validations": self.validations,
            "best": self.best,
            "stopped": self.stopped,
            "within_budget": self.stopped is not None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EarlyExitState:
        budget = Budget(float(data["budget"]["value"]), bool(data["budget"]["relative"]))
        return cls(
            float(data["reference"]),
            budget,
            [dict(v) for v in data.get("validations", [])],
            dict(data["best"]) if data.get("best") else None,
            dict(data["stopped"]) if data.get("stopped") else None,
        )


def _bbox_map(metrics: dict[str, float] | None) -> float:
    """The validation's bbox mAP; mmdet's CocoMetric reports nothing when the model made no
    detection above score_thr, which is an mAP of 0."""
    for key, value in (metrics or {}).items():
        if key.split("/", 1)[-1] == METRIC:
            return float(value)
    return 0.0


def _is_validation_point(runner: Any) -> bool:
    """Whether the loop validates at the iteration (or epoch) the run stands at: a resumed
    run validates where the uninterrupted run would have, not at every checkpoint."""
    loop = runner.train_loop
    interval = max(int(getattr(loop, "val_interval", 1) or 1), 1)
    if type(loop).__name__ == "EpochBasedTrainLoop":
        return runner.epoch % interval == 0
    return runner.iter % interval == 0


class EarlyExitHook(Hook):
    """Carries out `EarlyExitState` on the Runner: validation after initialization, the stop,
    the best checkpoint, the work dir's `accuracy_aware.json` and the checkpoints' meta."""

    # After SelfDescribingCheckpointHook (also VERY_LOW, registered first) has written the meta.
    priority = "VERY_LOW"

    def __init__(
        self, state: EarlyExitState, fully_compressed: Callable[[Any], tuple[bool, str]]
    ) -> None:
        self.state = state
        self.fully_compressed = fully_compressed

    def before_train(self, runner: Any) -> None:
        allowed = points(self.state.allowed)
        console.log.info(
            f"accuracy-aware training (early_exit): uncompressed {METRIC} "
            f"{self.state.reference:.4f}, budget {self.state.budget.describe()} = {allowed:.2f} "
            "points; training stops at the first validation within it"
        )
        # NNCF 2 validates the initialized model first. A resumed run validates the model it
        # loaded too, unless the state has it: the Runner saves an iteration's checkpoint
        # before that iteration's validation, so the state inside lacks that validation.
        validated = any(v["iteration"] == runner.iter for v in self.state.validations)
        if not validated and (runner.iter == 0 or _is_validation_point(runner)):
            runner.val_loop.run()

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        if getattr(runner.train_loop, "stop_training", False):
            return
        value = _bbox_map(metrics)
        fully, waiting = self.fully_compressed(runner)
        entry = self.state.record(runner.iter, runner.epoch, value, fully, waiting)
        where = f"iteration {runner.iter}"
        if not fully:
            status = f"not fully compressed yet ({waiting})"
        elif entry["within_budget"]:
            status = "within the budget: stopping"
        else:
            status = f"over the budget of {points(self.state.allowed):.2f}"
        console.log.info(
            f"accuracy-aware training: {where}: {METRIC} {value:.4f}, drop "
            f"{entry['drop_points']:.2f} points, {status}"
        )
        if entry["best"]:
            self._save_best(runner)
        if entry["within_budget"]:
            runner.train_loop.stop_training = True
        self._write_report(runner)

    def after_train(self, runner: Any) -> None:
        console.log.info(f"accuracy-aware training: {self.state.verdict()}")
        if self.state.best is not None:
            console.log.info(f"accuracy-aware training: best checkpoint {self.best_checkpoint}")

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {}).setdefault("detcompress", {})[META_KEY] = (
            self.state.to_json()
        )

    @property
    def best_checkpoint(self) -> Path | None:
        best = self.state.best
        return Path(best["checkpoint"]) if best and best.get("checkpoint") else None

    def _save_best(self, runner: Any) -> None:
        """The best fully compressed model so far, as mmengine's CheckpointHook names a best
        checkpoint; the previous best of this run is removed."""
        assert self.state.best is not None
        by_epoch = type(runner.train_loop).__name__ == "EpochBasedTrainLoop"
        name = (
            f"best_coco_{METRIC}_epoch_{runner.epoch}.pth"
            if by_epoch
            else f"best_coco_{METRIC}_iter_{runner.iter}.pth"
        )
        previous = self.best_checkpoint
        work_dir = Path(runner.work_dir)
        self.state.best["checkpoint"] = str(work_dir / name)
        self.state.validations[-1]["checkpoint"] = str(work_dir / name)
        # After the iteration's counter moved on: the meta must say where the model is.
        runner.save_checkpoint(
            str(work_dir), name, meta=dict(epoch=runner.epoch, iter=runner.iter), by_epoch=False
        )
        if previous is not None and previous.name != name and previous.parent == work_dir:
            previous.unlink(missing_ok=True)

    def _write_report(self, runner: Any) -> None:
        from mmengine.dist import is_main_process

        from detcompress.files import atomic_write_text

        if is_main_process():
            atomic_write_text(
                Path(runner.work_dir) / REPORT_FILE, json.dumps(self.state.to_json(), indent=2)
            )
