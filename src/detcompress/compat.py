"""Run-time workarounds for upstream bugs, each naming the bug. Nothing here edits mmdet."""

from __future__ import annotations

_applied = False


def apply_mmdet_workarounds() -> None:
    """Idempotent; call before building a detector."""
    global _applied
    if _applied:
        return
    # mmdet 3.3.0: SSDHead.__init__ never sets `loss_cls`, and the shared AnchorHead predict
    # path reads `self.loss_cls` -> AttributeError in predict mode (mmdet issues #11063, #11305).
    from mmdet.models.dense_heads import SSDHead

    if not hasattr(SSDHead, "loss_cls"):
        SSDHead.loss_cls = None
    _applied = True
