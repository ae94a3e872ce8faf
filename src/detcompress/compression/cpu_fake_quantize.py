"""Fused CPU kernels for NNCF's fake quantization (see fake_quantize_cpu.c for why).

`build_kernels(fallback)` compiles the C file once per user (cached by its hash, a second or
two with the system C compiler) and returns an object with NNCF's CPU-extension interface,
`Quantize_forward` / `Quantize_backward`; `speedups.use_fused_cpu_kernels` installs it. What
the kernels do not cover (other dtypes and layouts, a range varying along more than one axis)
goes to `fallback`. When the library cannot be built or loaded (no compiler, no writable cache,
a noexec cache), `build_kernels` warns and returns None.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).with_name("fake_quantize_cpu.c")
# -fno-trapping-math lets the compiler turn the backward's selects into vector blends; neither
# it nor -fno-math-errno changes any result.
COMPILE_FLAGS = [
    "-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
    "-fno-trapping-math",
]  # fmt: skip

logger = logging.getLogger(__name__)

# Tensors are passed as their data_ptr() integers (ctypes.cast costs microseconds per argument).
_ptr = ctypes.c_void_p
_i64 = ctypes.c_int64
_i32 = ctypes.c_int32
_f32 = ctypes.c_float


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "detcompress" / "kernels"


def _compile_flags() -> list[str]:
    """COMPILE_FLAGS, plus AVX2 where torch found it on this CPU: 8 float lanes instead of SSE's
    4, about half the backward's time; same results (IEEE operations, no FMA contraction). The
    flag is part of the cache key, so a cache shared with a CPU without AVX2 stays valid."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return [*COMPILE_FLAGS, "-mavx2"]
    return COMPILE_FLAGS


def _compile(source: Path) -> Path | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    flags = _compile_flags()
    key = f"{compiler} {' '.join(flags)}".encode()
    digest = hashlib.sha256(source.read_bytes() + key).hexdigest()
    library = _cache_dir() / f"fake_quantize_cpu_{digest[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: concurrent processes (DDP ranks) never load a
    # half-written library.
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        partial = Path(tmp) / library.name
        errors = ""
        # OpenMP: the library then shares torch's own libgomp (same soname, already loaded), so
        # its threads are torch's. Without OpenMP the kernels run on one thread.
        for openmp in (["-fopenmp"], []):
            done = subprocess.run(
                [compiler, *flags, *openmp, str(source), "-o", str(partial)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode == 0:
                os.replace(partial, library)
                return library
            errors = done.stderr.strip()
    logger.warning("detcompress: could not compile %s: %s", source, errors)
    return None


def _layout(
    input_: torch.Tensor, input_low: torch.Tensor, input_range: torch.Tensor
) -> tuple[int, int, int] | None:
    """(outer, channels, inner) of the input seen as [outer, channels, inner] with one quantizer
    range per channel, or None when the range is not per-tensor or along one axis. NNCF's low
    and range always have the same shape (the scale's); anything else goes to the fallback."""
    shape = tuple(input_range.shape)
    if tuple(input_low.shape) != shape or len(shape) > input_.dim():
        return None
    shape = (1,) * (input_.dim() - len(shape)) + shape
    axes = [axis for axis, size in enumerate(shape) if size != 1]
    if not axes:
        return 1, 1, input_.numel()
    axis = axes[0]
    channels = input_.shape[axis]
    if len(axes) > 1 or shape[axis] != channels:
        return None
    outer = math.prod(input_.shape[:axis])
    return outer, channels, math.prod(input_.shape[axis + 1 :])


def _supported(*tensors: torch.Tensor) -> bool:
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.layout == torch.strided
        for t in tensors
    )


class FusedQuantizedFunctions:
    """NNCF's CPU quantization kernel interface, one fused pass each way."""

    def __init__(self, library: ctypes.CDLL, fallback: Any):
        self._lib = library
        self._fallback = fallback
        library.fq_forward.argtypes = [_ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr, _i32, _i32]
        library.fq_backward.argtypes = [
            _ptr, _ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr, _i32, _i32, _i32, _ptr, _ptr, _ptr,
            _i32,
        ]  # fmt: skip
        library.fq_symmetric_forward.argtypes = [
            _ptr, _ptr, _i64, _i64, _i64, _ptr, _f32, _f32, _ptr, _ptr, _i32, _i32,
        ]  # fmt: skip
        library.fq_symmetric_backward.argtypes = [
            _ptr, _ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr, _i32, _i32, _i32, _ptr, _ptr, _ptr,
            _i32,
        ]  # fmt: skip
        for name in ("fq_forward", "fq_backward", "fq_symmetric_forward", "fq_symmetric_backward"):
            getattr(library, name).restype = None
        library.fq_task_elements.restype = _i64
        self._task_elements = int(library.fq_task_elements())

    def task_count(self, layout: tuple[int, int, int]) -> int:
        outer, channels, inner = layout
        return outer * channels * -(-inner // self._task_elements)

    def symmetric_fake_quantize(
        self, x: torch.Tensor, scale: torch.Tensor, eps: float, level_low: int, level_high: int
    ) -> torch.Tensor | None:
        """What NNCF's SymmetricQuantizer computes from its scale parameter (range derivation,
        quantization, and the gradients of both through |scale| + eps), in one C call each way
        instead of ~20 tensor operations and Python calls; bit-identical. None when the kernels
        do not cover the tensors (then NNCF's own path runs)."""
        if not _supported(x, scale) or scale.dim() > x.dim():
            return None
        layout = _layout(x, scale, scale)
        if layout is None:
            return None
        result: torch.Tensor = _SymmetricFakeQuantize.apply(
            x, scale, self, layout, eps, level_low, level_high
        )
        return result

    def Quantize_forward(  # NNCF's name
        self, input_: torch.Tensor, input_low: torch.Tensor, input_range: torch.Tensor, levels: int
    ) -> torch.Tensor:
        layout = _layout(input_, input_low, input_range)
        if layout is None or not _supported(input_, input_low, input_range):
            return self._fallback.Quantize_forward(input_, input_low, input_range, levels)
        x = input_.detach().contiguous()
        low = input_low.detach().contiguous()
        range_ = input_range.detach().contiguous()
        out = torch.empty_like(x)
        self._lib.fq_forward(
            x.data_ptr(), out.data_ptr(), *layout, low.data_ptr(), range_.data_ptr(), int(levels),
            torch.get_num_threads(),
        )  # fmt: skip
        return out

    def Quantize_backward(  # NNCF's name
        self,
        grad_output: torch.Tensor,
        input_: torch.Tensor,
        input_low: torch.Tensor,
        input_range: torch.Tensor,
        levels: int,
        level_low: int,
        level_high: int,
        is_asymmetric: bool,
    ) -> list[torch.Tensor]:
        layout = _layout(input_, input_low, input_range)
        if layout is None or not _supported(grad_output, input_, input_low, input_range):
            return self._fallback.Quantize_backward(
                grad_output, input_, input_low, input_range, levels, level_low, level_high,
                is_asymmetric,
            )  # fmt: skip
        channels = layout[1]
        x = input_.detach().contiguous()
        grad = grad_output.detach().contiguous()
        low = input_low.detach().contiguous()
        range_ = input_range.detach().contiguous()
        grad_x = torch.empty_like(x)
        tasks = self.task_count(layout)
        # One buffer: per-task scratch (2 * tasks), then the range and low sums per channel.
        sums = torch.empty(2 * tasks + 2 * channels, dtype=torch.float64)
        self._lib.fq_backward(
            grad.data_ptr(), x.data_ptr(), grad_x.data_ptr(), *layout, low.data_ptr(),
            range_.data_ptr(), int(levels), int(level_low), int(level_high), sums.data_ptr(),
            sums[2 * tasks :].data_ptr(), sums[2 * tasks + channels :].data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        # Shaped like the parameters, as NNCF's sum_like means to (for per-tensor quantizers it
        # returns a larger shape that autograd then sums down to the parameter's).
        grad_range = sums[2 * tasks : 2 * tasks + channels].to(input_range.dtype)
        grad_low = sums[2 * tasks + channels :].to(input_low.dtype)
        return [grad_x, grad_low.reshape(input_low.shape), grad_range.reshape(input_range.shape)]


class _SymmetricFakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        scale: torch.Tensor,
        kernels: FusedQuantizedFunctions,
        layout: tuple[int, int, int],
        eps: float,
        level_low: int,
        level_high: int,
    ) -> torch.Tensor:
        x = x.detach().contiguous()
        scale = scale.detach().contiguous()
        channels = layout[1]
        ranges = torch.empty(2 * channels, dtype=torch.float32)  # low, then range, per channel
        out = torch.empty_like(x)
        kernels._lib.fq_symmetric_forward(
            x.data_ptr(), out.data_ptr(), *layout, scale.data_ptr(), eps, level_low / level_high,
            ranges.data_ptr(), ranges.data_ptr() + 4 * channels, level_high - level_low + 1,
            torch.get_num_threads(),
        )  # fmt: skip
        ctx.save_for_backward(x, scale, ranges)
        ctx.constants = (kernels, layout, level_low, level_high)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, scale, ranges = ctx.saved_tensors
        kernels, layout, level_low, level_high = ctx.constants
        channels = layout[1]
        grad = grad_output.contiguous()
        grad_x = torch.empty_like(x)
        grad_scale = torch.empty_like(scale)
        scratch = torch.empty(2 * kernels.task_count(layout) + 2 * channels, dtype=torch.float64)
        kernels._lib.fq_symmetric_backward(
            grad.data_ptr(), x.data_ptr(), grad_x.data_ptr(), *layout, ranges.data_ptr(),
            ranges.data_ptr() + 4 * channels, level_high - level_low + 1, level_low, level_high,
            scratch.data_ptr(), scale.data_ptr(), grad_scale.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return grad_x, grad_scale, None, None, None, None, None


def build_kernels(fallback: Any) -> FusedQuantizedFunctions | None:
    try:
        library = _compile(SOURCE)
        if library is None:
            return None
        return FusedQuantizedFunctions(ctypes.CDLL(str(library)), fallback)
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        logger.warning("detcompress: fused CPU kernels unavailable (%s); NNCF's are used", error)
        return None
