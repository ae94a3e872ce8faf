"""The fused CPU fake-quantization kernels against NNCF's own CPU arithmetic."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from detcompress.compression import cpu_fake_quantize


class NNCFArithmetic:
    """NNCF's CPU extension (nncf/torch/extensions/src/quantization/cpu/functions_cpu.cpp),
    transcribed op for op into eager torch. NNCF's Python reference functions are not used:
    they run through torch.compile, whose fused code rounds differently in the last bit."""

    calls = 0

    @staticmethod
    def Quantize_forward(x: Any, low: Any, range_: Any, levels: int) -> Any:  # NNCF's name
        NNCFArithmetic.calls += 1
        scale = torch.full_like(range_, levels - 1) / range_  # C++ scalar / tensor: a division
        out = torch.max(torch.min(x, low + range_), low)
        zero_point = (-low * scale).round_()
        out = out - low
        out *= scale
        out -= zero_point
        return out.round_().div_(scale)

    @staticmethod
    def Quantize_backward(
        grad: Any, x: Any, low: Any, range_: Any, levels: int, level_low: int, level_high: int,
        asymmetric: bool,
    ) -> list[Any]:  # fmt: skip
        NNCFArithmetic.calls += 1
        out = NNCFArithmetic.Quantize_forward(x, low, range_, levels)
        alpha = (torch.tensor(float(level_low)) / torch.tensor(float(level_high))).item()
        mask_hi, mask_lo = x > low + range_, x < low
        err = (out - x) * (torch.ones_like(range_) / range_)
        err = err.masked_fill(mask_hi, 1).masked_fill(mask_lo, alpha) * grad
        outside = mask_hi | mask_lo
        grad_low = grad.masked_fill(~outside, 0).sum_to_size(low.shape)
        return [grad.masked_fill(outside, 0), grad_low, err.sum_to_size(range_.shape)]


# (name, input shape, range shape, levels, level_low, level_high, asymmetric)
CASES = [
    ("per-tensor symmetric", (4, 8, 33, 31), (1,), 256, -128, 127, False),
    ("per-tensor asymmetric", (4, 8, 33, 31), (1,), 256, 0, 255, True),
    ("per-channel activations", (3, 16, 17, 9), (1, 16, 1, 1), 256, 0, 255, True),
    ("per-channel weights", (24, 8, 3, 3), (24, 1, 1, 1), 255, -127, 127, False),
    ("7-bit weights (overflow fix)", (24, 8, 3, 3), (24, 1, 1, 1), 128, -64, 63, False),
    ("more than one task per row", (2, 3, 130, 131), (1, 3, 1, 1), 256, 0, 255, True),
    ("2-d linear weights", (10, 40), (10, 1), 256, -128, 127, False),
]


@pytest.fixture(scope="module")
def kernels() -> Any:
    built = cpu_fake_quantize.build_kernels(fallback=NNCFArithmetic)
    if built is None:
        pytest.fail("no C compiler: the fused kernels could not be built")
    return built


def _inputs(shape: tuple, range_shape: tuple, asymmetric: bool, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * 3
    scale = torch.rand(range_shape, generator=generator) * 2 + 0.5
    if asymmetric:
        low = -torch.rand(range_shape, generator=generator) * 2
        range_ = scale * 2
    else:  # what NNCF's QuantizeSymmetric passes: low = scale * level_low / level_high
        low = scale * (-128 / 127)
        range_ = scale - low
    # Exact boundary values and ties of the rounding, where implementations could differ.
    flat = x.view(-1)
    first_low, first_range = low.view(-1)[0], range_.view(-1)[0]
    step = first_range / 255
    flat[:5] = torch.stack([first_low, first_low + first_range, first_low - 1, 0 * step, step / 2])
    return x, low, range_


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_is_bit_identical_and_backward_matches(kernels: Any, case: tuple) -> None:
    _, shape, range_shape, levels, level_low, level_high, asymmetric = case
    x, low, range_ = _inputs(shape, range_shape, asymmetric)
    calls = NNCFArithmetic.calls
    expected = NNCFArithmetic.Quantize_forward(x, low, range_, levels)
    got_forward = kernels.Quantize_forward(x, low, range_, levels)
    assert torch.equal(got_forward, expected)
    assert torch.equal(got_forward.signbit(), expected.signbit())  # -0.0 stays -0.0

    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    args = (grad, x, low, range_, levels, level_low, level_high, asymmetric)
    ref = NNCFArithmetic.Quantize_backward(*args)
    got = kernels.Quantize_backward(*args)
    assert NNCFArithmetic.calls == calls + 3  # the kernels themselves never fell back
    assert torch.equal(got[0], ref[0])  # gradient of the input: the same mask
    # Per-channel sums: float in a different order (in double across blocks) than ATen's sum.
    assert got[2].shape == range_.shape
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-4)
    if asymmetric:
        assert got[1].shape == low.shape
        torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-4)


def test_gradient_sums_do_not_depend_on_the_thread_count(kernels: Any) -> None:
    x, low, range_ = _inputs((8, 16, 64, 64), (1,), True)
    grad = torch.randn_like(x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.Quantize_backward(grad, x, low, range_, 256, 0, 255, True)
        torch.set_num_threads(max(threads, 2))
        many = kernels.Quantize_backward(grad, x, low, range_, 256, 0, 255, True)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True))


def test_what_the_kernels_do_not_cover_goes_to_the_fallback(kernels: Any) -> None:
    x, low, range_ = _inputs((2, 4, 5, 5), (1, 4, 1, 1), True)
    calls = NNCFArithmetic.calls
    double = x.double(), low.double(), range_.double()
    kernels.Quantize_forward(*double, 256)
    kernels.Quantize_backward(torch.ones_like(double[0]), *double, 256, 0, 255, True)
    # A range varying along two axes is nothing NNCF makes; the fallback still answers.
    low2 = low.expand(2, 4, 1, 1).clone()
    range2 = range_.expand(2, 4, 1, 1).clone() + torch.arange(2.0).view(2, 1, 1, 1)
    kernels.Quantize_forward(x, low2, range2, 256)
    assert NNCFArithmetic.calls == calls + 4  # the backward recomputes the forward


def test_kernels_that_cannot_be_built_leave_nncfs_in_place(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert cpu_fake_quantize.build_kernels(fallback=NNCFArithmetic) is None
    monkeypatch.setenv("CC", "cc")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "detcompress").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert cpu_fake_quantize.build_kernels(fallback=NNCFArithmetic) is None


def test_nncf_quantizers_run_the_fused_kernels() -> None:
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.layers import PTQuantizerSpec, SymmetricQuantizer

    from detcompress.compression import speedups

    assert speedups.use_fused_cpu_kernels()
    kernels = extensions.QuantizedFunctionsCPU._loaded_namespace
    assert isinstance(kernels, cpu_fake_quantize.FusedQuantizedFunctions)
    spec = PTQuantizerSpec(
        num_bits=8, mode=QuantizationScheme.SYMMETRIC, signedness_to_force=True,
        narrow_range=False, half_range=False, scale_shape=(1, 6, 1, 1), logarithm_scale=False,
    )  # fmt: skip
    quantizer = SymmetricQuantizer(spec)
    x = torch.randn(2, 6, 7, 7, requires_grad=True)
    calls = {"forward": 0, "backward": 0}
    forward, backward = kernels.Quantize_forward, kernels.Quantize_backward

    def counted_forward(*args: Any) -> Any:
        calls["forward"] += 1
        return forward(*args)

    def counted_backward(*args: Any) -> Any:
        calls["backward"] += 1
        return backward(*args)

    kernels.Quantize_forward, kernels.Quantize_backward = counted_forward, counted_backward
    try:
        quantizer(x).sum().backward()
    finally:
        del kernels.Quantize_forward, kernels.Quantize_backward
    assert calls == {"forward": 1, "backward": 1}
    assert x.grad is not None and quantizer.scale.grad is not None
    assert quantizer.scale.grad.shape == quantizer.scale.shape


# (name, input shape, scale shape, signed, bits)
SYMMETRIC_CASES = [
    ("per-channel weights", (24, 8, 3, 3), (24, 1, 1, 1), True, 8),
    ("per-tensor signed activations", (4, 8, 33, 31), (1,), True, 8),
    ("per-tensor unsigned activations", (4, 8, 33, 31), (1,), False, 8),
    ("4-bit per-channel", (16, 4, 3, 3), (16, 1, 1, 1), True, 4),
]


@pytest.mark.parametrize("case", SYMMETRIC_CASES, ids=[c[0] for c in SYMMETRIC_CASES])
def test_fused_symmetric_quantizer_is_bit_identical_to_nncfs(case: tuple) -> None:
    """The training fast path (nncf_internals.fused_symmetric_forward: range from the scale,
    quantization and both gradients in one call each way) against NNCF's SymmetricQuantizer
    forward with the same kernels: output, input gradient and scale gradient bit for bit,
    including negative scales (autograd's |scale| backward) and ties at the range ends."""
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.layers import PTQuantizerSpec, SymmetricQuantizer

    from detcompress.compression import speedups
    from detcompress.compression.speedups import nncf_internals

    _, shape, scale_shape, signed, bits = case
    assert speedups.use_fused_cpu_kernels()
    kernels = extensions.QuantizedFunctionsCPU._loaded_namespace
    spec = PTQuantizerSpec(
        num_bits=bits, mode=QuantizationScheme.SYMMETRIC, signedness_to_force=signed,
        narrow_range=bits == 8 and len(scale_shape) > 1, half_range=False,
        scale_shape=scale_shape, logarithm_scale=False,
    )  # fmt: skip
    quantizer = SymmetricQuantizer(spec)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        quantizer.scale.copy_(torch.rand(scale_shape, generator=generator) * 2 + 0.1)
        quantizer.scale.view(-1)[0] *= -1  # a negative scale: |s| forward, sgn(s) backward
    x0 = torch.randn(shape, generator=generator) * 2
    x0.view(-1)[:3] = torch.tensor([2.0, -2.0, 0.0]) * quantizer.scale.detach().abs().view(-1)[0]
    grad = torch.randn(shape, generator=generator)
    fused_forward = nncf_internals.fused_symmetric_forward(kernels)

    def run(forward: Any) -> tuple[torch.Tensor, ...]:
        quantizer.scale.grad = None
        x = x0.clone().requires_grad_()
        out = forward(quantizer, x)
        out.backward(grad)
        assert x.grad is not None and quantizer.scale.grad is not None
        return out.detach(), x.grad, quantizer.scale.grad.clone()

    calls = {"nncf": 0}
    nncf_forward = kernels.Quantize_forward

    def counted(*args: Any) -> Any:
        calls["nncf"] += 1
        return nncf_forward(*args)

    kernels.Quantize_forward = counted
    try:
        expected = run(SymmetricQuantizer.forward)
        assert calls["nncf"] == 1
        got = run(fused_forward)
        assert calls["nncf"] == 1  # the fused path never went through NNCF's quantize
    finally:
        del kernels.Quantize_forward
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a, b) and torch.equal(a.signbit(), b.signbit())
    quantizer.disable_quantization()
    assert fused_forward(quantizer, x0) is x0  # disabled: the input itself, as NNCF returns it
