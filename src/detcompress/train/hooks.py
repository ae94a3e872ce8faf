"""detcompress's own Runner hooks: checkpoints that describe themselves and load with
`weights_only=True`, the metrics of the latest validation, batch-norm statistics kept equal
over the ranks, and a stop at the first non-finite loss or weight. (The compression schedules'
hook is `compression_hook.py`.)"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from mmengine.hooks import Hook

from detcompress import console
from detcompress.errors import TrainingDivergedError
from detcompress.model import detector
from detcompress.model.checkpoint import from_safe_message_hub, plain, to_safe_message_hub


class SelfDescribingCheckpointHook(Hook):
    """Adds detcompress's meta to every checkpoint (with the compression structure as it is at
    saving time) and stores the message hub in plain types, so that the checkpoint loads with
    torch's `weights_only=True`."""

    priority = "VERY_LOW"  # after mmengine's own hooks have filled the checkpoint

    def __init__(
        self, meta: dict[str, Any], structure: Callable[[Any], dict[str, Any] | None]
    ) -> None:
        self.meta = meta
        self.structure = structure

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        model = detector.unwrapped(runner.model)
        structure = self.structure(model)
        meta = {**self.meta, "compressed": structure is not None, "structure": structure}
        checkpoint.setdefault("meta", {})["detcompress"] = plain(meta)
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = to_safe_message_hub(checkpoint["message_hub"])

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if isinstance(checkpoint.get("message_hub"), dict):
            from_safe_message_hub(checkpoint["message_hub"])


class MetricsRecorderHook(Hook):
    """Keeps the metrics of the latest validation and the iteration they belong to."""

    priority = "LOW"

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.iteration: int | None = None

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        self.metrics = {k: float(v) for k, v in (metrics or {}).items()}
        self.iteration = runner.iter


def norm_buffers(model: Any) -> list[Any]:
    """The floating-point buffers of the batch-norm layers (running mean and variance)."""
    from torch.nn.modules.batchnorm import _NormBase

    return [
        buffer
        for module in model.modules()
        if isinstance(module, _NormBase)
        for buffer in module.buffers(recurse=False)
        if buffer.is_floating_point()
    ]


class SyncNormStatsHook(Hook):
    """Average the batch-norm running statistics over the ranks after every training
    iteration, so that validation (sharded over the ranks) and the checkpoint (written by rank
    0) see one model. One coalesced all-reduce of a few KB per iteration beside DDP's
    gradients."""

    priority = "NORMAL"  # before CheckpointHook (VERY_LOW) and before validation

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        from mmengine.dist import all_reduce_params

        all_reduce_params(norm_buffers(runner.model), coalesce=True, op="mean")


# What to try when training diverges, in the order most likely to help.
DIVERGENCE_ADVICE = (
    "try a lower learning rate (--cfg-options optim_wrapper.optimizer.lr=...), gradient "
    "clipping (--cfg-options 'optim_wrapper.clip_grad={max_norm: 10}'), or start from a "
    "longer-trained checkpoint"
)


def _logged_grad_norm(runner: Any) -> float | None:
    """The gradient norm mmengine's optimizer wrapper logged for this iteration (only when the
    config clips gradients), or None."""
    hub = getattr(runner, "message_hub", None)
    buffer = hub.log_scalars.get("train/grad_norm") if hub is not None else None
    if buffer is None or not len(buffer.data[0]):
        return None
    return float(buffer.current())


def _plain_optimizer(runner: Any) -> Any:
    """The optimizer whose steps take gradients as computed: none for mixed precision, whose
    loss scaler meets inf gradients on purpose and skips those steps itself, nor for several
    optimizers."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    wrapper = getattr(runner, "optim_wrapper", None)
    if isinstance(wrapper, AmpOptimWrapper) or not isinstance(wrapper, OptimWrapper):
        return None
    return getattr(wrapper, "optimizer", None)


class FiniteValuesHook(Hook):
    """Stops training at the first non-finite loss, gradient or NaN head output, naming the
    iteration and where it appeared, and refuses to save a checkpoint holding non-finite
    weights, so that a diverged run never ends as a 'successful' checkpoint of NaNs. The head's
    outputs are checked as they are computed: with diverged weights, mmdet's assigners fail on
    them before any loss exists (YOLOX's SimOTA: "all elements of input should be between 0
    and 1")."""

    priority = "NORMAL"  # before CheckpointHook (VERY_LOW) saves this iteration

    def __init__(self) -> None:
        self._runner: Any = None
        self._handles: list[Any] = []
        self._names: dict[int, str] = {}
        self._overflow_reported = False

    def before_train(self, runner: Any) -> None:
        self._runner = runner
        model = detector.unwrapped(runner.model)
        head = getattr(model, "bbox_head", None)
        if head is not None:
            self._handles.append(head.register_forward_hook(self._check_head_outputs))
        optimizer = _plain_optimizer(runner)
        if optimizer is not None:
            self._names = {id(p): name for name, p in model.named_parameters()}
            self._handles.append(optimizer.register_step_pre_hook(self._check_gradients))

    def after_train(self, runner: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _check_gradients(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Before the step: a non-finite gradient would make every weight it reaches NaN, and
        the losses stay finite until the next iteration (or never, with clipping)."""
        import torch

        params = [p for group in optimizer.param_groups for p in group["params"]]
        params = [p for p in params if p.grad is not None]
        if not params or self._runner is None:
            return
        norms = torch.stack(torch._foreach_norm([p.grad for p in params]))
        finite = torch.isfinite(norms)
        if bool(finite.all()):
            return
        bad = [p for p, ok in zip(params, finite.tolist(), strict=True) if not ok]
        first = self._names.get(id(bad[0]), "a parameter")
        raise TrainingDivergedError(
            f"iteration {self._runner.iter + 1}: the gradients of {len(bad)} parameter tensors "
            f"hold NaN or inf ({first}, ...); training stopped before the step, and no "
            f"checkpoint of it was written; {DIVERGENCE_ADVICE}"
        )

    def _check_head_outputs(self, module: Any, inputs: Any, outputs: Any) -> None:
        import torch

        if not module.training or self._runner is None:
            return
        pending = [outputs]
        while pending:
            item = pending.pop()
            if isinstance(item, (list, tuple)):
                pending.extend(item)
            elif isinstance(item, torch.Tensor) and bool(torch.isnan(item).any()):
                # NaN only: an infinite logit still has a finite loss (sigmoid(inf) is 1), and
                # randomly initialized models produce them in their first QAT steps.
                raise TrainingDivergedError(
                    f"iteration {self._runner.iter + 1}: the head's outputs hold NaN "
                    f"(the weights diverged); training stopped, and no checkpoint of it was "
                    f"written; {DIVERGENCE_ADVICE}"
                )

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        values = dict(outputs or {})
        terms = [k for k in values if k != "loss"] + (["loss"] if "loss" in values else [])
        clipped = _logged_grad_norm(runner)
        if clipped is not None and not math.isfinite(clipped) and not self._overflow_reported:
            # Finite gradients whose norm overflows float32: clipping scaled them all to 0, the
            # step changed nothing. Not a stop: one such step in a long run is harmless (a
            # barely trained model's first QAT steps do this; see tests/test_stock_configs.py).
            self._overflow_reported = True
            console.log.warning(
                f"iteration {runner.iter + 1}: the gradient norm is {clipped}: gradient clipping "
                "scaled every gradient to 0 and the step changed nothing (said once; the "
                "log's grad_norm shows each iteration); if it persists, "
                + DIVERGENCE_ADVICE.replace(
                    "gradient clipping (--cfg-options 'optim_wrapper.clip_grad={max_norm: 10}'), ",
                    "",
                )
            )
        for name in terms:
            value = values[name]
            value = float(value.detach()) if hasattr(value, "detach") else float(value)
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"iteration {runner.iter + 1}: {name} is {value}; training stopped, and no "
                    f"checkpoint of it was written; {DIVERGENCE_ADVICE}"
                )

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        import torch

        bad = [
            name
            for name, tensor in checkpoint.get("state_dict", {}).items()
            if isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and not bool(torch.isfinite(tensor).all())
        ]
        if bad:
            raise TrainingDivergedError(
                f"iteration {runner.iter}: {len(bad)} weight tensors hold NaN or inf ({bad[0]}, "
                f"...); the checkpoint was not written; {DIVERGENCE_ADVICE}"
            )
