"""Every run-time patch of a third-party library is undone when its block ends (or by the undo
it returns)."""

from __future__ import annotations

from typing import Any

import torch


def test_context_patches_restore_what_they_replaced() -> None:
    import logging

    from mmengine.logging import MMLogger
    from mmengine.registry import registry
    from mmengine.runner import runner as runner_module
    from mmengine.runner.checkpoint import CheckpointLoader
    from pycocotools import coco

    from detcompress import patches

    cases: list[tuple[Any, Any]] = [
        (patches.atomic_checkpoint_saves(), lambda: runner_module.save_checkpoint),
        (patches.registry_imports_disabled(), lambda: registry.get_object_from_string),
        (patches.mmengine_loads_checkpoints_safely(False), lambda: CheckpointLoader._schemes),
        (patches.cuda_set_device_without_cuda(), lambda: torch.cuda.set_device),
        (patches.mmengine_terminal_filtered(logging.Filter()), lambda: MMLogger.__init__),
        (patches.coco_prints_to_log(), lambda: vars(coco).get("print")),
    ]
    for manager, current in cases:
        before = current()
        with manager:
            during = current()
        assert current() is before, manager
        if not (
            manager.gen.__name__ == "cuda_set_device_without_cuda" and torch.cuda.is_available()
        ):
            assert during is not before, manager  # it did patch something


def test_model_patches_return_their_undo() -> None:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from detcompress import patches

    register_all_modules()
    model = MODELS.build(
        dict(
            type="RetinaNet",
            backbone=dict(type="ResNet", depth=18, out_indices=(3,)),
            neck=None,
            bbox_head=dict(
                type="RetinaHead", num_classes=2, in_channels=512, feat_channels=8,
                anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                      scales_per_octave=1, ratios=[1.0], strides=[32]),
                bbox_coder=dict(type="DeltaXYWHBBoxCoder"),
            ),
        )
    )  # fmt: skip
    undo_forward = patches.route_head_through_module(model)
    undo_init = patches.mark_initialized(model)
    assert "_forward" in vars(model) and "init_weights" in vars(model)
    undo_forward()
    undo_init()
    assert "_forward" not in vars(model) and "init_weights" not in vars(model)


def test_mmdet_workaround_is_undone() -> None:
    from mmdet.models.dense_heads import SSDHead

    from detcompress import patches

    patches.undo_mmdet_workarounds()  # other tests of this process may have applied it
    assert "loss_cls" not in vars(SSDHead)  # mmdet 3.3.0 itself does not set it
    patches.apply_mmdet_workarounds()
    assert SSDHead.loss_cls is None
    patches.undo_mmdet_workarounds()
    assert "loss_cls" not in vars(SSDHead)
    patches.apply_mmdet_workarounds()  # as the rest of the suite expects it
