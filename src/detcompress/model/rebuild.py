"""A compressed detector back from a detcompress checkpoint: its compression structure
(pruned architecture, NNCF's hooks) rebuilt on a freshly built model, then its weights and
quantizer values loaded, with no re-initialization; and the nncf_config it was compressed with,
which a different requested one may not silently replace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detcompress.errors import CheckpointError, ConfigError


def rebuild_structure(model: Any, meta: dict[str, Any], source: Path | str) -> Any:
    """The compression structure of a detcompress checkpoint on `model` (pruned architecture,
    NNCF's hooks; values untrained)."""
    from detcompress.compression import require_nncf
    from detcompress.compression.pipeline import needs_nncf, rebuild_model

    structure = meta.get("structure") or {}
    if needs_nncf(structure):
        require_nncf()
    return rebuild_model(model, structure, str(source))


def rebuild_compressed(
    model: Any, meta: dict[str, Any], checkpoint: Any, source: Path | str = "checkpoint"
) -> Any:
    """`rebuild_structure`, then the checkpoint's weights and quantizer values."""
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    try:
        model = rebuild_structure(model, meta, source)
        _load_checkpoint_to_model(model, checkpoint, strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next(
            (line for line in lines if "size mismatch" in line), lines[0] if lines else ""
        )
        raise CheckpointError(
            f"{source}: its compressed weights do not fit the model of this config "
            f"({type(exc).__name__}: {detail[:300]}); pass the --config it was trained with, "
            "or none to use the one stored in it"
        ) from None
    return model


def nncf_config_of_checkpoint(path: Path, meta: dict[str, Any], requested: Any, force: bool) -> Any:
    """A compressed checkpoint brings its own nncf_config; a different requested one is refused
    (with the differing keys) unless --force."""
    from detcompress.config.accuracy_aware import SECTION
    from detcompress.config.presets import build_nncf_config, differing_keys

    # The accuracy budget is a setting of a run, not of the model: the requested one applies.
    stored = {k: v for k, v in (meta.get("nncf_config") or {}).items() if k != SECTION}
    wanted = {k: v for k, v in requested.raw.items() if k != SECTION}
    if not requested.is_empty:
        diff = differing_keys(stored, wanted)
        if diff and not force:
            raise ConfigError(
                f"{path}: was compressed with a different nncf_config (differing keys: "
                f"{', '.join(diff)}); pass --force to continue with the checkpoint's compression"
            )
    if SECTION in requested.raw:
        stored[SECTION] = requested.raw[SECTION]
    return build_nncf_config(stored, f"{path} (nncf_config)")
