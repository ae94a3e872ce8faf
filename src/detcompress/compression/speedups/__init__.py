"""detcompress's QAT speed-ups over NNCF 3.4's internals, behind one guarded boundary.

Two things make int8 QAT on CPU cheaper with bit-identical results (tests compare losses,
gradients and predictions with NNCF's own path):
- `use_fused_cpu_kernels`: NNCF's fake quantizers run detcompress's fused C kernels
  (`cpu_fake_quantize`) instead of NNCF's C++ extension;
- `speed_up_training`: the training forward skips NNCF's per-operation tracing where no hook
  can be (see its docstring).

Both reach into NNCF's private API. `PRIVATE_SYMBOLS` lists every private name they rely on and
`VERIFIED_NNCF_VERSIONS` the releases they were checked against; `unavailable_reason()` checks
both once per process. On any other NNCF, or with a symbol missing, the speed-ups switch
themselves off with one warning and NNCF's own path runs (slower, same results).
`DETCOMPRESS_NNCF_SPEEDUPS=off` switches them off on purpose.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("detcompress")

VERIFIED_NNCF_VERSIONS = ("3.4.0",)

# (module, attribute path) of every private NNCF name the speed-ups use; a dotted path names an
# attribute of a class (one set on instances is looked up in the class's source).
PRIVATE_SYMBOLS = (
    ("nncf.torch.quantization.extensions", "QuantizedFunctionsCPU._loaded_namespace"),
    ("nncf.torch.quantization.reference", "ReferenceQuantizedFunctions"),
    ("nncf.torch.quantization.layers", "SymmetricQuantizer._scale_param_storage"),
    ("nncf.torch.quantization.layers", "SymmetricQuantizer._level_low"),
    ("nncf.torch.function_hook.hook_executor_mode", "FunctionHookMode"),
    ("nncf.torch.function_hook.hook_executor_mode", "FunctionHookMode.get_next_op_call_name"),
    ("nncf.torch.function_hook.hook_executor_mode", "FunctionHookMode.hooks_module_to_group_name"),
    ("nncf.torch.function_hook.hook_executor_mode", "get_handle_inner_function"),
    ("nncf.torch.function_hook.hook_executor_mode", "IGNORED_FN_NAMES"),
    ("nncf.torch.function_hook.hook_executor_mode", "OpMeta"),
    ("nncf.torch.function_hook.hook_executor_mode", "disable_function_hook_mode"),
    ("nncf.torch.function_hook.hook_storage", "HookStorage._generate_key"),
    ("nncf.torch.function_hook.wrapper", "ForwardWithHooks"),
    ("nncf.torch.function_hook.wrapper", "ForwardWithHooks.orig_forward"),
    ("nncf.torch.function_hook.wrapper", "get_hook_storage"),
    ("nncf.common.utils.debug", "is_debug"),
    ("nncf.torch.utils", "is_tracing_state"),
)


@functools.cache
def unavailable_reason() -> str | None:
    """Why the speed-ups cannot run here (None: they can). Checked once per process."""
    if os.environ.get("DETCOMPRESS_NNCF_SPEEDUPS", "on") == "off":
        return "switched off by DETCOMPRESS_NNCF_SPEEDUPS=off"
    import nncf

    if nncf.__version__ not in VERIFIED_NNCF_VERSIONS:
        return (
            f"NNCF {nncf.__version__} is not a version they were verified with "
            f"({', '.join(VERIFIED_NNCF_VERSIONS)})"
        )
    missing = missing_symbols()
    if missing:
        return f"NNCF {nncf.__version__} lacks {', '.join(missing)}"
    return None


def missing_symbols() -> list[str]:
    missing = []
    for module_name, path in PRIVATE_SYMBOLS:
        try:
            node: Any = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        for part in path.split("."):
            if hasattr(node, part):
                node = getattr(node, part)
            elif isinstance(node, type) and _instance_attribute(node, part):
                node = None  # set on instances: nothing further to look into
            else:
                missing.append(f"{module_name}.{path}")
                break
    return missing


def _instance_attribute(cls: type, name: str) -> bool:
    """Whether instances of `cls` get attribute `name` in the methods of NNCF's classes in its
    MRO (read from their source: NNCF sets these in __init__ or registers them as buffers)."""
    import inspect

    assigned = (f"self.{name} =", f"self.{name}:", f'"{name}"', f"'{name}'")
    for klass in cls.__mro__:
        if not klass.__module__.startswith("nncf"):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if any(text in source for text in assigned):
            return True
    return False


def available() -> bool:
    """Whether the speed-ups can run; says once why not."""
    reason = unavailable_reason()
    if reason is not None:
        _warn_once(reason)
    return reason is None


@functools.cache
def _warn_once(reason: str) -> None:
    logger.warning(
        "detcompress's QAT speed-ups are off (%s): NNCF's own path runs, slower, same results",
        reason,
    )


def use_fused_cpu_kernels() -> bool:
    """Install the fused CPU kernels for NNCF's fake quantizers (see
    `nncf_internals.use_fused_cpu_kernels`); False where the speed-ups are off."""
    if not available():
        return False
    from detcompress.compression.speedups import nncf_internals

    return nncf_internals.use_fused_cpu_kernels()


def speed_up_training(model: Any) -> Callable[[], None]:
    """Speed up the training forward of an NNCF-compressed model (see
    `nncf_internals.speed_up_training`); returns the undo. A no-op where the speed-ups are off."""
    if not available():
        return lambda: None
    from detcompress.compression.speedups import nncf_internals

    return nncf_internals.speed_up_training(model)
