"""Normalization arithmetic stays in float under `--preset int8`: GroupNorm (FCOS and ATSS
heads; with per-channel weights NNCF 3.4's range initialization crashed on it) and mmdet's
L2Norm (SSD300; int8 turned small norms into 0 and x / 0 into NaN)."""

from __future__ import annotations

import torch
from torch import nn


class _ConvGNL2Norm(nn.Module):
    """conv -> L2Norm (SSD300's neck) -> conv -> GroupNorm (FCOS's head) -> conv."""

    def __init__(self) -> None:
        from mmdet.models.necks.ssd_neck import L2Norm

        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.l2_norm = L2Norm(8, scale=20.0)
        nn.init.constant_(self.l2_norm.weight, self.l2_norm.scale)  # as mmdet's init_weights
        self.mid = nn.Conv2d(8, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.gn(self.mid(self.l2_norm(self.stem(x))))))


def test_group_norm_and_l2norm_are_not_quantized_and_per_channel_int8_runs() -> None:
    from detcompress.compression import nncf_adapter
    from detcompress.config.presets import build_nncf_config, bundled_presets, read_preset_file

    torch.manual_seed(0)
    model = _ConvGNL2Norm().eval()
    path = bundled_presets()["int8"]
    algo = build_nncf_config(read_preset_file(path), str(path)).quantization
    assert algo is not None and algo.weights.per_channel is True  # what crashed NNCF on GN
    batches = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    quantized, summary = nncf_adapter.quantize(model, algo, batches, lambda b: b, [])

    assert summary.float_normalization == {"GroupNorm": 1, "L2Norm": 11}
    assert "normalization arithmetic kept in float" in "\n".join(summary.lines())
    hooks = [name for name, _ in nncf_adapter.quantizer_modules(quantized)]
    # Nothing inside either layer; the L2Norm's result (its last operation, type_as) feeds the
    # next convolution, whose input quantizer NNCF places there.
    inside = [h for h in hooks if "group_norm" in h or ("l2_norm/" in h and "type_as" not in h)]
    assert inside == [] and any("l2_norm/type_as" in h for h in hooks), hooks
    assert summary.weight_quantizers == 3  # the three convolutions
    # Features near zero: the L2Norm divides by their norm, which int8 would round to 0.
    tiny = torch.randn(2, 3, 16, 16) * 1e-4
    with torch.no_grad():
        assert torch.isfinite(quantized(tiny)).all()
