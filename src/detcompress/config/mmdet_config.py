"""mmdet config loading, `--cfg-options`, and the merged nncf_config.

Merge order (later wins, dicts merged recursively): the mmdet config's inline `nncf_config`,
then the preset, then `--cfg-options` (keys under `nncf_config.`). Other `--cfg-options` keys
override the mmdet config itself, as mmdet's tools do.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detcompress.config.presets import (
    NNCFConfig,
    build_nncf_config,
    merge_nncf_configs,
    read_preset_file,
    resolve_preset,
    validate,
)
from detcompress.errors import ConfigError, PresetError, closest

NNCF_KEY = "nncf_config"
# Config-level keys that detcompress honours even when the config does not define them.
DETCOMPRESS_KEYS = ("nncf_compress_postprocessing", "load_from", "work_dir", NNCF_KEY)


@dataclass
class LoadedConfig:
    """An mmdet config with its validated, merged nncf_config."""

    path: Path
    cfg: Any  # mmengine.config.Config
    nncf: NNCFConfig
    compress_postprocessing: bool
    sources: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_cfg_options(options: list[str]) -> list[tuple[str, Any]]:
    """`key=value` pairs, values parsed as YAML (never evaluated as code)."""
    pairs = []
    for item in options:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--cfg-options: '{item}' is not key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"--cfg-options: value of '{key}' is not valid YAML: {text!r}"
            ) from exc
        pairs.append((key, value))
    return pairs


def load_mmdet_config(path: Path) -> Any:
    """Config.fromfile with one-line errors naming the file."""
    from mmengine.config import Config

    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.suffix != ".py":
        raise ConfigError(f"{path}: an mmdet config must be a .py file")
    try:
        if Config._is_lazy_import(str(path)):
            raise ConfigError(
                f"{path}: top-level import statements make mmengine read it as a lazy-import "
                "config; use `_base_ = 'mmdet::...'` inheritance instead"
            )
        return Config.fromfile(str(path))
    except ConfigError:
        raise
    except SyntaxError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:  # mmengine raises many kinds; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: cannot load mmdet config: {first}") from exc


def load_config(
    path: Path, preset: str | None = None, cfg_options: list[str] | None = None
) -> LoadedConfig:
    cfg = load_mmdet_config(path)
    pairs = parse_cfg_options(cfg_options or [])
    nncf_pairs = [(k, v) for k, v in pairs if k == NNCF_KEY or k.startswith(NNCF_KEY + ".")]
    cfg_pairs = [(k, v) for k, v in pairs if (k, v) not in nncf_pairs]
    _apply_cfg_overrides(cfg, cfg_pairs, path)

    warnings: list[str] = []
    sources: list[str] = []
    parts: list[dict[str, Any]] = []
    inline = cfg.get(NNCF_KEY)
    if inline is not None:
        inline = inline.to_dict() if hasattr(inline, "to_dict") else inline
        if not isinstance(inline, dict):
            raise ConfigError(f"{path}: '{NNCF_KEY}' must be a dict, got {type(inline).__name__}")
        source = f"{path} ({NNCF_KEY})"
        warnings += validate(inline, source, complete=False)
        parts.append(inline)
        sources.append(source)
    if preset is not None:
        preset_path = resolve_preset(preset)
        data = read_preset_file(preset_path)
        warnings += validate(data, str(preset_path), complete=False)
        parts.append(data)
        sources.append(str(preset_path))
    merged = merge_nncf_configs(*parts)
    if nncf_pairs:
        for key, value in nncf_pairs:
            dotted = key[len(NNCF_KEY) + 1 :]
            merged = _set_dotted(merged, dotted, value, key) if dotted else _whole(merged, value)
        validate(merged, "--cfg-options", complete=False)
        sources.append("--cfg-options")
    nncf = build_nncf_config(merged, " + ".join(sources) or str(path))
    if preset is not None and nncf.is_empty:
        raise PresetError(
            f"{resolve_preset(preset)}: compresses nothing (no algorithm under 'compression'); "
            "a preset names at least one, e.g. 'compression: {algorithm: quantization}'. To "
            "fine-tune without compression, leave --preset out"
        )

    postprocessing = cfg.get("nncf_compress_postprocessing", True)
    if not isinstance(postprocessing, bool):
        raise ConfigError(
            f"{path}: 'nncf_compress_postprocessing' must be true or false, got {postprocessing!r}"
        )
    return LoadedConfig(path, cfg, nncf, postprocessing, sources, warnings + list(nncf.warnings))


def _whole(merged: dict[str, Any], value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"--cfg-options: '{NNCF_KEY}' must be a mapping, got {value!r}")
    return merge_nncf_configs(merged, value)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, option: str) -> dict[str, Any]:
    """Set `a.b.0.c` in nested dicts/lists (numeric parts index lists); returns a copy."""
    out = copy.deepcopy(data)
    node: Any = out
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"--cfg-options: '{option}': '{part}' is not an index of the list at "
                    f"'{'.'.join(parts[:i])}' (0..{len(node) - 1})"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(
                f"--cfg-options: '{option}': '{'.'.join(parts[:i])}' is a {type(node).__name__}, "
                "not a mapping"
            )
    return out


def apply_cfg_options(cfg: Any, options: list[str] | None, source: Path) -> None:
    """`--cfg-options key=value ...` applied to an already loaded config."""
    _apply_cfg_overrides(cfg, parse_cfg_options(options or []), source)


def _apply_cfg_overrides(cfg: Any, pairs: list[tuple[str, Any]], path: Path) -> None:
    for key, _ in pairs:
        top = key.split(".")[0]
        if top not in cfg and top not in DETCOMPRESS_KEYS:
            raise ConfigError(
                f"--cfg-options: unknown key '{key}' in {path}{closest(top, list(cfg.keys()))}"
            )
    current = cfg.to_dict() if pairs else {}
    for key, value in pairs:
        _check_same_kind(current, key, value, path)
    pairs = [(key, _tuple_where_tuple(_value_at(current, key), value)) for key, value in pairs]
    if pairs:
        try:
            cfg.merge_from_dict(dict(pairs), allow_list_keys=True)
        except Exception as exc:
            raise ConfigError(f"--cfg-options: cannot apply to {path}: {exc}") from exc


_NEW_KEY = object()


def _value_at(config: dict[str, Any], key: str) -> Any:
    """The config's value at a dotted key (list items by index), or _NEW_KEY."""
    current: Any = config
    for part in key.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list | tuple) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _NEW_KEY
    return current


def _tuple_where_tuple(current: Any, value: Any) -> Any:
    """A YAML list given for a tuple of the config becomes a tuple (YAML has none, and mmcv
    refuses a list for e.g. Resize's `scale` or Pad's `size`)."""
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def _check_same_kind(config: dict[str, Any], key: str, value: Any, path: Path) -> None:
    """A number or a boolean of the config is not replaced by a value of another kind (YAML
    reads `lr=abc` as a string, which would fail deep inside torch)."""
    current = _value_at(config, key)
    if current is _NEW_KEY:
        return  # a new key: nothing to compare with
    if isinstance(current, bool) and not isinstance(value, bool):
        expected = "true or false"
    elif (
        isinstance(current, int | float)
        and not isinstance(current, bool)
        and (isinstance(value, bool) or not isinstance(value, int | float))
    ):
        expected = "a number"
    else:
        return
    raise ConfigError(
        f"--cfg-options: '{key}' is {current!r} in {path}; got {value!r}, expected {expected}"
    )


# ---------------------------------------------------------------------------------------------
# Checks that need the config's values


def _datasets(dataset: Any) -> list[Any]:
    """The leaf datasets of a dataset config (through Repeat/ClassBalanced/Concat wrappers)."""
    if dataset is None:
        return []
    if "datasets" in dataset:
        return [d for sub in dataset["datasets"] for d in _datasets(sub)]
    if "dataset" in dataset:
        return _datasets(dataset["dataset"])
    return [dataset]


def check_data_paths(cfg: Any, config_path: Path, splits: tuple[str, ...]) -> None:
    """Fail early, naming the key, when a dataset file or folder of the config is missing."""
    for split in splits:
        loader = cfg.get(f"{split}_dataloader")
        if loader is None:
            raise ConfigError(f"{config_path}: no '{split}_dataloader' in the config")
        for ds in _datasets(loader.get("dataset")):
            root = Path(ds.get("data_root") or "")
            key = f"{split}_dataloader.dataset"
            if ds.get("data_root") and not root.exists():
                raise ConfigError(
                    f"{config_path}: '{key}.data_root' is '{root}', which does not exist"
                )
            ann = ds.get("ann_file")
            if ann and not (root / ann).exists():
                raise ConfigError(
                    f"{config_path}: '{key}.ann_file' is '{root / ann}', which does not exist"
                )
            img = (ds.get("data_prefix") or {}).get("img")
            if img and not (root / img).exists():
                raise ConfigError(
                    f"{config_path}: '{key}.data_prefix.img' is '{root / img}', which does not "
                    "exist"
                )
        evaluator = cfg.get(f"{split}_evaluator") if split != "train" else None
        for ev in evaluator if isinstance(evaluator, list) else [evaluator]:
            if ev and ev.get("ann_file") and not Path(ev["ann_file"]).exists():
                raise ConfigError(
                    f"{config_path}: '{split}_evaluator.ann_file' is '{ev['ann_file']}', which "
                    "does not exist"
                )
