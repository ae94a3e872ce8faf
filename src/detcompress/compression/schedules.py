"""Sparsity and filter-pruning schedules of NNCF's configuration schema, as plain functions of
the (fractional) training epoch. No nncf or torch-pruning here: the training hook asks these for
the level of the current iteration, and the compression adapters apply it.

Semantics follow NNCF 2's documentation (the schema MMDetection's NNCF integration used):

- sparsity `multistep`: `multistep_sparsity_levels[i]` from epoch `multistep_steps[i-1]` on
  (levels[0] from the start);
- sparsity `polynomial`: from `sparsity_init` to `sparsity_target` at `sparsity_target_epoch`,
  `init + (target - init) * (1 - (1 - progress) ** power)` when `concave` (the default: fast
  first, then flattening), `init + (target - init) * progress ** power` otherwise;
- sparsity `exponential`: `1 - (1 - init) * ((1 - target) / (1 - init)) ** progress`, so the
  fraction of weights kept shrinks by the same factor every epoch;
- pruning `baseline`: `pruning_init` for `num_init_steps` epochs, then `pruning_target`;
- pruning `exponential`: `pruning_init` for `num_init_steps` epochs, then the exponential above
  over `pruning_steps` epochs.

Sparsity levels change per epoch unless `update_per_optimizer_step` (polynomial and exponential)
asks for every iteration; pruning levels change per epoch (each change removes filters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from detcompress.config.algorithms import DEFAULT_POWER, FilterPruning, Sparsity
from detcompress.errors import PresetError


def exponential_level(initial: float, target: float, progress: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if progress <= 0.0:
        return initial
    if progress >= 1.0:
        return target
    kept = (1 - initial) * ((1 - target) / (1 - initial)) ** progress
    return 1 - kept


@dataclass(frozen=True)
class SparsitySchedule:
    """The sparsity level of a `magnitude_sparsity` or `rb_sparsity` entry at any epoch."""

    kind: str
    initial: float
    target: float
    target_epoch: int
    freeze_epoch: int | None
    per_iteration: bool
    steps: tuple[int, ...] = ()
    levels: tuple[float, ...] = ()
    power: float = DEFAULT_POWER
    concave: bool = True

    @classmethod
    def of(cls, algo: Sparsity) -> SparsitySchedule:
        if algo.schedule == "multistep":
            steps, levels = algo.multistep_steps, algo.multistep_levels
            return cls(
                algo.schedule,
                levels[0],
                levels[-1],
                steps[-1] if steps else 0,
                algo.sparsity_freeze_epoch,
                per_iteration=False,
                steps=steps,
                levels=levels,
            )
        initial, target = algo.sparsity_init, algo.sparsity_target
        if target < initial:
            raise PresetError(
                f"'{algo.name}': params.sparsity_target ({target}) is below sparsity_init "
                f"({initial}); sparsity only grows during training"
            )
        if algo.schedule == "exponential" and target >= 1:
            raise PresetError(f"'{algo.name}': params.sparsity_target must be below 1")
        return cls(
            algo.schedule,
            initial,
            target,
            algo.sparsity_target_epoch,
            algo.sparsity_freeze_epoch,
            per_iteration=algo.update_per_optimizer_step,
            power=algo.power,
            concave=algo.concave,
        )

    def level(self, epoch: float) -> float:
        """The level at `epoch` (fractional: iterations / iterations per epoch)."""
        if not self.per_iteration:
            epoch = math.floor(epoch)
        if self.kind == "multistep":
            reached = sum(1 for step in self.steps if epoch >= step)
            return self.levels[reached]
        if self.target_epoch <= 0:
            return self.target
        progress = min(max(epoch / self.target_epoch, 0.0), 1.0)
        if self.kind == "exponential":
            return exponential_level(self.initial, self.target, progress)
        span = self.target - self.initial
        if self.concave:
            return self.initial + span * (1 - (1 - progress) ** self.power)
        return self.initial + span * progress**self.power

    def frozen(self, epoch: float) -> bool:
        """Masks stop changing from `sparsity_freeze_epoch` on."""
        return self.freeze_epoch is not None and epoch >= self.freeze_epoch


@dataclass(frozen=True)
class PruningSchedule:
    """The fraction of filters removed by `filter_pruning` at any epoch."""

    kind: str
    initial: float
    target: float
    init_epochs: int
    steps: int

    @classmethod
    def of(cls, algo: FilterPruning) -> PruningSchedule:
        initial, target = algo.pruning_init, algo.pruning_target
        if target < initial:
            raise PresetError(
                f"'{algo.name}': params.pruning_target ({target}) is below pruning_init "
                f"({initial}); removed filters do not come back"
            )
        return cls(algo.schedule, initial, target, algo.num_init_steps, algo.pruning_steps)

    def level(self, epoch: float) -> float:
        epoch = math.floor(epoch)
        if epoch < self.init_epochs:
            return self.initial
        if self.kind == "baseline" or self.steps <= 0:
            return self.target
        return exponential_level(self.initial, self.target, (epoch - self.init_epochs) / self.steps)

    @property
    def last_change_epoch(self) -> int:
        """The epoch from which the level stays at the target."""
        return self.init_epochs + (0 if self.kind == "baseline" else max(self.steps, 0))
