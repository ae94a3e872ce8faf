"""Every torch-pruning call of detcompress: filter pruning that physically removes filters
(DepGraph keeps coupled layers consistent: batch norms, the next convolution's inputs, residual
and concat partners), and the pruned architecture to and from checkpoints.

The architecture is stored as plain data, the out-channel count of every convolution, and
re-applied to a detector freshly built from the config by removing the trailing channels; the
checkpoint's state_dict then fills in the kept filters (torch-pruning's own `state_dict` pickles
whole modules, which cannot be loaded with `weights_only=True`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from detcompress.errors import CheckpointError

IMPORTANCE = {
    "L2": lambda: tp.importance.MagnitudeImportance(p=2),
    "L1": lambda: tp.importance.MagnitudeImportance(p=1),
    "geometric_median": lambda: tp.importance.FPGMImportance(p=2),
}


# At the final pruning step, kept channels are rounded down to a multiple of this: CPU kernels
# work on blocks of 8 (AVX2) / 16 (AVX-512) channels and a remainder costs a full block
# (measured on the demo, AVX2: pruned int8 / int8 latency 0.93 unrounded, 0.72 rounded).
CHANNEL_MULTIPLE = 8


def _tensor_forward(model: nn.Module, inputs: torch.Tensor) -> Any:
    """mmdet's `tensor` mode (the network without postprocessing), plus every leaf module's
    tensor output: torch-pruning follows channels back from what this returns, and layers that
    run but feed no output (yolov3's MobileNetV2 computes its last `conv2` and its BN although
    its out_indices stop before them) would otherwise keep their old widths: a broken model."""
    leaf_outputs: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            leaf_outputs.append(output)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if not any(m.children())]
    try:
        return model(inputs, mode="tensor"), leaf_outputs
    finally:
        for hook in hooks:
            hook.remove()


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The convolution the image enters (NNCF 2 leaves it unpruned unless `prune_first_conv`)."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def group_norm_convs(model: nn.Module) -> list[tuple[nn.Conv2d, int]]:
    """Convolutions whose output a GroupNorm normalizes (mmcv's ConvModule with norm_cfg GN),
    with that norm's number of groups. torch-pruning removes their channels evenly from every
    group, at least one per group: 64 channels in 32 groups lose half at any level."""
    pairs = []
    for module in model.modules():
        conv = getattr(module, "conv", None)
        norms = [m for m in module.children() if isinstance(m, nn.GroupNorm)]
        if isinstance(conv, nn.Conv2d) and [n.num_channels for n in norms] == [conv.out_channels]:
            pairs.append((conv, norms[0].num_groups))
    return pairs


def too_narrow_per_group(model: nn.Module, ratio: float) -> list[nn.Conv2d]:
    """The GroupNorm-fed convolutions where `ratio` is less than one channel of each group:
    pruning them would remove far more than asked (and a group of one channel normalizes a
    1x1 feature map to nothing), so they keep their widths at this step."""
    return [
        conv
        for conv, groups in group_norm_convs(model)
        if int(ratio * conv.out_channels / groups + 1e-9) < 1
    ]


def conv_names(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def prune_filters(
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float,
    importance: str,
    ignored: Iterable[nn.Module],
    global_ranking: bool,
    round_channels: bool,
) -> None:
    """Remove `ratio` of the filters of every prunable convolution (of the model as it is now),
    ranked by `importance`; in place. `round_channels`: keep multiples of CHANNEL_MULTIPLE
    (skipped when a prunable convolution is too narrow for that)."""
    ignored = list(ignored)
    skip = {id(m) for m in ignored}
    narrowest = min(
        (m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in skip),
        default=0,
    )
    round_to = CHANNEL_MULTIPLE if round_channels and narrowest >= 2 * CHANNEL_MULTIPLE else None
    pruner = tp.pruner.MetaPruner(
        model,
        example_input,
        importance=IMPORTANCE[importance](),
        pruning_ratio=ratio,
        global_pruning=global_ranking,
        ignored_layers=ignored,
        forward_fn=_tensor_forward,
        round_to=round_to,
    )
    pruner.step()


def channel_counts(model: nn.Module) -> dict[str, int]:
    """The pruned architecture: out channels of every convolution."""
    return {name: conv.out_channels for name, conv in conv_names(model).items()}


def apply_channel_counts(
    model: nn.Module, counts: dict[str, int], example_input: torch.Tensor, source: str
) -> None:
    """Shrink a freshly built detector to the stored architecture (trailing filters removed,
    coupled layers with them); the checkpoint's weights are loaded afterwards."""
    convs = conv_names(model)
    unknown = sorted(set(counts) - set(convs))
    if unknown:
        raise CheckpointError(
            f"{source}: the pruned architecture names convolutions the config's model does not "
            f"have ({', '.join(unknown[:3])}, ...); was it pruned from another config?"
        )
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=example_input, forward_fn=_tensor_forward
    )
    for name, conv in convs.items():
        wanted = counts.get(name, conv.out_channels)
        if conv.out_channels > wanted:
            group = graph.get_pruning_group(
                conv, tp.prune_conv_out_channels, idxs=list(range(wanted, conv.out_channels))
            )
            group.prune()
    wrong = [
        n for n, c in conv_names(model).items() if c.out_channels != counts.get(n, c.out_channels)
    ]
    if wrong:
        raise CheckpointError(
            f"{source}: cannot rebuild the pruned architecture ({wrong[0]} has "
            f"{convs[wrong[0]].out_channels} channels, {counts[wrong[0]]} stored)"
        )
