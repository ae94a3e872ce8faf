"""The training hook that carries out sparsity and filter-pruning schedules and logs the
compression statistics after every validation.

The level of each schedule is a function of the iteration alone (iterations / iterations per
epoch), so a resumed run changes levels at exactly the iterations an uninterrupted run would.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from mmengine.hooks import Hook

from detcompress.compression import pipeline
from detcompress.compression.schedules import PruningSchedule, SparsitySchedule
from detcompress.compression.settings import progressive_pruning
from detcompress.compression.state import state_of
from detcompress.compression.statistics import statistics, statistics_table
from detcompress.config.presets import NNCFConfig
from detcompress.model.detector import unwrapped


class CompressionScheduleHook(Hook):
    # Before the optimizer step of the iteration, after mmengine's own bookkeeping.
    priority = "ABOVE_NORMAL"

    def __init__(self, nncf_config: NNCFConfig) -> None:
        self.nncf_config = nncf_config
        sparsity = nncf_config.sparsity
        self.sparsity_algo = sparsity
        self.sparsity = SparsitySchedule.of(sparsity) if sparsity is not None else None
        pruning = nncf_config.filter_pruning
        self.pruning_algo = pruning
        self.pruning = (
            PruningSchedule.of(pruning)
            if pruning is not None and progressive_pruning(nncf_config)
            else None
        )
        self.statistics: dict[str, Any] = {}
        self.rb_loss: Any = None
        self._undo_speedups: Any = None
        quantization = nncf_config.quantization
        # NNCF 2's quant start epochs: quantizers of that kind stay off before their epoch.
        self.quant_start = (
            (quantization.weights_quant_start_epoch, quantization.activations_quant_start_epoch)
            if quantization is not None
            else (None, None)
        )
        self._quantizers_on: tuple[bool, bool] | None = None
        # NNCF 2's `steps_per_epoch`: what one epoch of the schedules is, in iterations.
        self.steps_per_epoch = next(
            (a.steps_per_epoch for a in nncf_config.algorithms if a.steps_per_epoch is not None),
            None,
        )

    def epoch(self, runner: Any, batch_idx: int) -> float:
        """The fractional epoch of the iteration about to run."""
        if self.steps_per_epoch is not None:  # runner.iter counts every finished iteration
            return runner.iter / self.steps_per_epoch
        loader = runner.train_dataloader
        per_epoch = len(loader)
        sampler = getattr(loader, "sampler", None)
        if type(sampler).__name__ == "InfiniteSampler":  # its length is the whole dataset's
            per_epoch //= max(getattr(sampler, "world_size", 1), 1)
        per_epoch = max(per_epoch, 1)
        if type(runner.train_loop).__name__ == "EpochBasedTrainLoop":
            return runner.epoch + batch_idx / per_epoch
        return runner.iter / per_epoch

    def before_train(self, runner: Any) -> None:
        model = unwrapped(runner.model)
        if self.sparsity_algo is not None and self.sparsity_algo.name == "rb_sparsity":
            self._add_rb_loss(model)
        if "nncf" in sys.modules:  # else nothing can be NNCF-compressed (e.g. filter pruning)
            from detcompress.compression import nncf_adapter, speedups

            if nncf_adapter.is_compressed(model):
                self._undo_speedups = speedups.speed_up_training(model)

    def after_train(self, runner: Any) -> None:
        model = unwrapped(runner.model)
        if "loss" in vars(model):  # the RB loss patch: the trained model keeps mmdet's loss
            del model.loss
        if self._undo_speedups is not None:  # export and the rest see NNCF's model as NNCF made it
            self._undo_speedups()
            self._undo_speedups = None

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        model = unwrapped(runner.model)
        epoch = self.epoch(runner, batch_idx)
        if self.quant_start != (None, None):
            self._switch_quantizers(runner, model, epoch)
        state = state_of(model)
        if state is None:
            return
        if self.sparsity is not None and self.sparsity_algo is not None:
            level = self.sparsity.level(epoch)
            # Levels only grow (a compressed checkpoint fine-tuned again keeps its sparsity).
            current = state.sparsity_level if state.sparsity_level is not None else -1.0
            if level > current and not self.sparsity.frozen(epoch):
                from detcompress.compression import nncf_adapter

                if self.rb_loss is not None:
                    self.rb_loss.target = level  # the masks follow through the loss
                else:
                    nncf_adapter.set_sparsity_level(model, self.sparsity_algo, level)
                    _sync_ema_masks(runner)
                state.sparsity_level = level
                measured = nncf_adapter.sparsity_statistics(model)["masked_sparsity"]
                runner.logger.info(
                    f"[detcompress] iteration {runner.iter} (epoch {epoch:.2f}): sparsity level "
                    f"{level:.4f}, measured {measured:.4f}"
                )
        if self.pruning is not None and self.pruning_algo is not None:
            level = self.pruning.level(epoch)
            if level > (state.pruning_level or 0.0):
                step = pipeline.prune_to(model, self.pruning_algo, state, level)
                _rebuild_optimizer(runner)
                _rebuild_ema(runner)
                runner.logger.info(
                    f"[detcompress] iteration {runner.iter} (epoch {epoch:.2f}): pruning level "
                    f"{level:.4f}, filters {step.filters_before} -> {step.filters_after}"
                    + (
                        f" ({step.kept_for_groups} convolutions feeding a GroupNorm keep their "
                        "widths: less than one channel per group to remove)"
                        if step.kept_for_groups
                        else ""
                    )
                )
        if runner.message_hub is not None:
            if state.sparsity_level is not None:
                runner.message_hub.update_scalar("train/sparsity_level", state.sparsity_level)
            if state.pruning_level is not None:
                runner.message_hub.update_scalar("train/pruning_level", state.pruning_level)

    def fully_compressed(self, runner: Any) -> tuple[bool, str]:
        """Whether every schedule has reached its target (NNCF 2's FULLY_COMPRESSED stage, the
        only point at which an accuracy-aware run may stop), and else what it waits for."""
        state = state_of(unwrapped(runner.model))
        waiting = []
        # Before the first iteration the quantizers are as initialized: all on.
        if self._quantizers_on not in (None, (True, True)):
            waiting.append("quantizers switched on later")
        if self.sparsity is not None:
            level = state.sparsity_level if state and state.sparsity_level is not None else 0.0
            if level < self.sparsity.target - 1e-9:
                waiting.append(f"sparsity level {level:.3f} of {self.sparsity.target:g}")
        if self.pruning is not None:
            level = state.pruning_level if state and state.pruning_level is not None else 0.0
            if level < self.pruning.target - 1e-9:
                waiting.append(f"pruning level {level:.3f} of {self.pruning.target:g}")
        return not waiting, ", ".join(waiting)

    def _switch_quantizers(self, runner: Any, model: Any, epoch: float) -> None:
        weights_start, activations_start = self.quant_start
        wanted = (
            weights_start is None or epoch >= weights_start,
            activations_start is None or epoch >= activations_start,
        )
        if wanted == self._quantizers_on:
            return
        from detcompress.compression import nncf_adapter

        nncf_adapter.enable_quantizers(model, weights=wanted[0], activations=wanted[1])
        self._quantizers_on = wanted
        runner.logger.info(
            f"[detcompress] iteration {runner.iter} (epoch {epoch:.2f}): weight quantizers "
            f"{'on' if wanted[0] else 'off'}, activation quantizers {'on' if wanted[1] else 'off'}"
        )

    def _add_rb_loss(self, model: Any) -> None:
        """The RB loss term joins the detector's loss dict (mmdet sums every `loss*` key)."""
        from detcompress.compression import nncf_adapter

        state = state_of(model)
        level = state.sparsity_level if state is not None and state.sparsity_level else 0.0
        self.rb_loss = nncf_adapter.RBSparsityLoss(model, level)
        detector_loss = model.loss
        rb_loss = self.rb_loss

        def loss_with_sparsity(*args: Any, **kwargs: Any) -> dict[str, Any]:
            losses = detector_loss(*args, **kwargs)
            device = next(model.parameters()).device
            losses["loss_rb_sparsity"] = rb_loss().to(device)
            return losses

        model.loss = loss_with_sparsity

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        model = unwrapped(runner.model)
        self.statistics = statistics(model, self.nncf_config)
        for line in statistics_table(self.statistics):
            runner.logger.info(f"[detcompress] {line}")


def _sync_ema_masks(runner: Any) -> None:
    """mmengine's EMA copy stops following boolean buffers after its first update: give it the
    new sparsity masks, or validation and checkpoints would use the old level's."""
    from mmengine.hooks import EMAHook

    source = dict(unwrapped(runner.model).named_buffers())
    for hook in runner.hooks:
        if isinstance(hook, EMAHook) and getattr(hook, "ema_model", None) is not None:
            for name, buffer in hook.ema_model.module.named_buffers():
                if name.endswith("binary_mask") and name in source:
                    buffer.copy_(source[name])


def _rebuild_optimizer(runner: Any) -> None:
    """After filters were removed: a new optimizer over the new parameters, with the old
    groups' hyperparameters (the LR schedule's current values) and the old state of every
    parameter whose shape did not change (momentum of pruned ones restarts)."""
    wrapper = runner.optim_wrapper
    old = wrapper.optimizer
    fresh = runner.build_optim_wrapper(copy.deepcopy(runner.cfg.optim_wrapper)).optimizer
    if len(fresh.param_groups) != len(old.param_groups):
        from detcompress.errors import ConfigError

        raise ConfigError(
            "filter pruning during training: the optimizer's parameter groups changed when "
            "filters were removed (a custom optimizer constructor?); prune at once with "
            "params.schedule 'baseline' and num_init_steps 0"
        )
    for old_group, new_group in zip(old.param_groups, fresh.param_groups, strict=True):
        for key, value in old_group.items():
            if key != "params":
                new_group[key] = value
    old_params = [p for g in old.param_groups for p in g["params"]]
    new_params = [p for g in fresh.param_groups for p in g["params"]]
    for before, after in zip(old_params, new_params, strict=False):
        state = old.state.get(before)
        if before is after and state and _shaped_like(state, after):
            fresh.state[after] = state
    wrapper.optimizer = fresh


def _shaped_like(state: dict[str, Any], param: Any) -> bool:
    import torch

    return all(
        v.shape == param.shape for v in state.values() if isinstance(v, torch.Tensor) and v.dim()
    )


def _rebuild_ema(runner: Any) -> None:
    """An EMA copy of the old architecture cannot average the new one: start it again."""
    from mmengine.hooks import EMAHook

    for hook in runner.hooks:
        if isinstance(hook, EMAHook):
            hook.before_run(runner)
