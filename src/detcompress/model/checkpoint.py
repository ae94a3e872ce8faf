"""Checkpoints that load without unpickling arbitrary objects.

torch >= 2.6 loads with `weights_only=True` by default, and plain mmengine checkpoints fail that
way (the message hub pickles `HistoryBuffer` objects and numpy arrays). detcompress writes its
checkpoints in plain types (see `to_safe_message_hub`) and loads every checkpoint safely; a
foreign checkpoint that needs full unpickling is refused unless the user passes
`--trust-checkpoint`. mmengine's own loading goes through
`patches.mmengine_loads_checkpoints_safely`, so the
Runner's `load_from` and `resume` obey the same rule.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detcompress.errors import CheckpointError

TRUST_FLAG = "--trust-checkpoint"
_HISTORY_MARK = "__detcompress_history_buffer__"


def load_checkpoint(path: Path | str, map_location: Any = "cpu", trust: bool = False) -> Any:
    """torch.load with weights_only=True; full unpickling only when `trust` is set."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected a checkpoint file (.pth)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    check_looks_like_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            reason = str(exc).split("\n")
            detail = next((line.strip() for line in reason if "GLOBAL" in line), "")
            detail = f" ({detail.rstrip('.')})" if detail else ""
            raise CheckpointError(
                f"{path}: this checkpoint needs full unpickling, which can run arbitrary code"
                f"{detail}; pass {TRUST_FLAG} if you trust where it came from"
            ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, pickle.UnpicklingError) as exc:
        raise _unreadable(path, exc) from exc


# torch.save writes a zip archive; torch < 1.6 (and `_use_new_zipfile_serialization=False`)
# wrote a pickle stream, which starts with the PROTO opcode.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def check_looks_like_checkpoint(path: Path) -> None:
    """Say what a file is when it is not a PyTorch checkpoint at all (before any unpickling,
    so that the refusal never suggests --trust-checkpoint for it)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO):
        return
    expected = "expected a PyTorch checkpoint (.pth) written by torch.save"
    if not head:
        raise CheckpointError(f"{path}: is an empty file; {expected}")
    text = head.lstrip()
    if text.startswith((b"<?xml", b"<net")):
        raise CheckpointError(
            f"{path}: is an XML file (an OpenVINO IR?), not a checkpoint; {expected} "
            "(eval and bench take an IR as .xml)"
        )
    try:
        first_line = head.decode("utf-8").strip().splitlines()[0][:80]
    except (UnicodeDecodeError, IndexError):
        raise CheckpointError(f"{path}: is not a PyTorch checkpoint; {expected}") from None
    named = Path(first_line)
    hint = f" (it names {first_line}: pass that file)" if named.suffix == ".pth" else ""
    raise CheckpointError(f"{path}: is a text file, not a checkpoint{hint}; {expected}")


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(
        f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {first}"
    )


# ---------------------------------------------------------------------------------------------
# The message hub in plain types


def plain(value: Any) -> Any:
    """numpy -> Python; containers recursively; anything else unsafe -> dropped (None)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    if isinstance(value, str):
        return str(value)  # str subclasses such as torch's TorchVersion need unpickling
    if value is None or isinstance(value, int | float | bool | torch.Tensor):
        return value
    return None


def to_safe_message_hub(state: dict[str, Any]) -> dict[str, Any]:
    """mmengine MessageHub.state_dict() -> the same content in weights_only-loadable types."""
    from mmengine.logging import HistoryBuffer

    scalars = {}
    for key, buf in state.get("log_scalars", {}).items():
        if isinstance(buf, HistoryBuffer):
            log, count = buf.data
            scalars[key] = {
                _HISTORY_MARK: True,
                "log": plain(log),
                "count": plain(count),
                "max_length": buf.max_length,
            }
    info = {k: plain(v) for k, v in state.get("runtime_info", {}).items()}
    return {
        "log_scalars": scalars,
        "runtime_info": {k: v for k, v in info.items() if v is not None},
        "resumed_keys": dict(state.get("resumed_keys", {})),
    }


def from_safe_message_hub(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `to_safe_message_hub` (in place, returns `state`)."""
    from mmengine.logging import HistoryBuffer

    scalars = state.get("log_scalars", {})
    for key, value in list(scalars.items()):
        if isinstance(value, dict) and value.get(_HISTORY_MARK):
            scalars[key] = HistoryBuffer(value["log"], value["count"], value["max_length"])
    return state
