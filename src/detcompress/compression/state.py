"""The compression state that training changes (the current sparsity and pruning levels, the
original size for the statistics): it travels with the model, and into every checkpoint with
the compression structure."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATE_ATTRIBUTE = "_detcompress_compression"


@dataclass
class CompressionState:
    """What training changes besides weights, kept on the model and in checkpoints."""

    input_shape: list[int]
    sparsity_level: float | None = None
    pruning_level: float | None = None
    original: dict[str, int] = field(default_factory=dict)  # params, macs, filters

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def state_of(model: Any) -> CompressionState | None:
    state = getattr(model, STATE_ATTRIBUTE, None)
    return state if isinstance(state, CompressionState) else None


def attach_state(model: Any, state: CompressionState) -> None:
    object.__setattr__(model, STATE_ATTRIBUTE, state)
