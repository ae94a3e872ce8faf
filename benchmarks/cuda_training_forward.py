"""On a CUDA device: detcompress's QAT training forward (`speedups.speed_up_training`)
against NNCF's own, on a small conv net quantized by `nncf.quantize` (NNCF's CUDA kernels).

    python benchmarks/cuda_training_forward.py [--json FILE]

Three training steps from the same state with NNCF's forward and with detcompress's (the first
recorded in the hook mode, then module hooks): loss and every gradient must be bit-identical
(deterministic cuDNN). Prints the step time of both and their ratio (module hooks / NNCF).
Needs only torch and nncf (no mmdet); exits 1 if anything differs, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = ConvBNAct(channels, channels)
        self.b = ConvBNAct(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class SmallDetectorLike(nn.Module):
    """Backbone stages with residual blocks, an upsampling neck that calls one nn.Upsample
    twice, a head convolution: the hook placements of a YOLOX-like detector."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 16, 2)
        self.s1 = nn.Sequential(ConvBNAct(16, 32, 2), Block(32))
        self.s2 = nn.Sequential(ConvBNAct(32, 64, 2), Block(64))
        self.up = nn.Upsample(scale_factor=2)
        self.lateral = nn.Conv2d(64, 32, 1)
        self.fuse = ConvBNAct(64, 32)
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.s1(self.stem(x))
        c2 = self.s2(c1)
        p = torch.cat([self.up(self.lateral(c2)), c1], 1)
        return self.head(self.fuse(self.up(p)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    import nncf
    from nncf.torch.function_hook.wrapper import get_hook_storage

    from detcompress.compression import speedups

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    device = torch.device("cuda")
    torch.manual_seed(0)
    calibration = [torch.randn(4, 3, 64, 64, device=device) for _ in range(4)]
    model = nncf.quantize(
        SmallDetectorLike().to(device), nncf.Dataset(calibration), subset_size=4,
        fast_bias_correction=True,
    )  # fmt: skip
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(4, 3, 64, 64, device=device) for _ in range(3)]

    def step(x: torch.Tensor) -> list[torch.Tensor | None]:
        model.zero_grad(set_to_none=True)
        loss = (model(x) ** 2).mean()
        loss.backward()
        grads = [None if p.grad is None else p.grad.clone() for p in params]
        return [loss.detach().clone(), *grads]

    def run() -> list[list[torch.Tensor | None]]:
        model.load_state_dict(start)
        return [step(x) for x in batches]

    def same(a: list[Any], b: list[Any]) -> bool:
        return all(
            (p is None and q is None) or (p is not None and q is not None and torch.equal(p, q))
            for p, q in zip(a, b, strict=True)
        )

    def ms_per_step(count: int = 50) -> float:
        for _ in range(5):
            step(batches[0])
        torch.cuda.synchronize()
        start_time = time.perf_counter()
        for _ in range(count):
            step(batches[0])
        torch.cuda.synchronize()
        return (time.perf_counter() - start_time) / count * 1000

    expected, again = run(), run()
    undo = speedups.speed_up_training(model)
    got = run()
    forwards = dict(vars(model)["forward"].forwards)
    ours_ms = ms_per_step()
    undo()
    nncf_ms = ms_per_step()
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "nncf": nncf.__version__,
        "hooks": len(list(get_hook_storage(model).named_hooks())),
        "nncf_repeatable": all(same(a, b) for a, b in zip(expected, again, strict=True)),
        "identical_steps": [same(a, b) for a, b in zip(got, expected, strict=True)],
        "gradients_compared": sum(g is not None for g in got[0][1:]),
        "forwards": forwards,
        "ms_per_step_detcompress": ours_ms,
        "ms_per_step_nncf": nncf_ms,
        "detcompress_over_nncf": ours_ms / nncf_ms,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = report["nncf_repeatable"] and all(report["identical_steps"])
    return 0 if ok and forwards.get("module hooks", 0) >= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
