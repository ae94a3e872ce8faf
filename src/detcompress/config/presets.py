"""Compression presets: load (bundled name or file), validate, merge into one nncf_config.

A preset is a YAML/JSON document in NNCF's configuration schema (`schema.py`). Sources are
validated one by one (so an error names the file it came from) and the merged result is
validated again as a whole, then turned into typed objects (`NNCFConfig`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from detcompress.config import accuracy_aware, schema
from detcompress.config.accuracy_aware import AccuracyAwareTraining
from detcompress.config.algorithms import (
    SPARSITY_ALGORITHMS,
    Algorithm,
    FilterPruning,
    Quantization,
    Sparsity,
    algorithm_of,
)
from detcompress.errors import PresetError, closest

PRESET_SUFFIXES = (".yaml", ".yml", ".json")


# ---------------------------------------------------------------------------------------------
# Bundled presets


def _bundled_dir() -> Path:
    return Path(str(resources.files("detcompress") / "presets"))


def bundled_presets() -> dict[str, Path]:
    """Bundled preset name -> file."""
    return {p.stem: p for p in sorted(_bundled_dir().glob("*.yaml"))}


def resolve_preset(name_or_path: str) -> Path:
    """A bundled preset name or a path to a .yaml/.yml/.json file -> the file."""
    path = Path(name_or_path)
    bundled = bundled_presets()
    # A bundled name wins over a folder of that name (e.g. a work dir called int8).
    if (
        path.suffix.lower() in PRESET_SUFFIXES
        or path.is_file()
        or (path.exists() and name_or_path not in bundled)
    ):
        if not path.is_file():
            raise PresetError(f"{path}: preset file not found")
        return path
    if name_or_path in bundled:
        return bundled[name_or_path]
    raise PresetError(
        f"unknown preset '{name_or_path}'{closest(name_or_path, bundled)}; bundled presets: "
        f"{', '.join(bundled)}, or a path to a .yaml/.yml/.json file"
    )


def read_preset_file(path: Path) -> dict[str, Any]:
    """Parse a preset file (YAML or JSON) into a dict, with a one-line error on failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PresetError(f"{path}: cannot read preset: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise PresetError(
            f"{path}: not a text file (UTF-8); a preset is YAML or JSON in NNCF's config schema"
        ) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        if isinstance(exc, json.JSONDecodeError):
            line = f" at line {exc.lineno}"
        raise PresetError(f"{path}: not valid {_kind(path)}{line}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PresetError(
            f"{path}: a preset must be a mapping of NNCF config keys, got {type(data).__name__}"
        )
    return data


def _kind(path: Path) -> str:
    return "JSON" if path.suffix.lower() == ".json" else "YAML"


# ---------------------------------------------------------------------------------------------
# Merging


# Keys that say the same thing in two units (images / batches): a later source that sets one
# replaces the other of an earlier source, instead of leaving both.
ALTERNATIVE_KEYS = {
    "num_init_samples": "num_init_steps",
    "num_init_steps": "num_init_samples",
    "num_bn_adaptation_samples": "num_bn_adaptation_steps",
    "num_bn_adaptation_steps": "num_bn_adaptation_samples",
}


def merge(base: Any, override: Any) -> Any:
    """Later wins; dicts merge recursively; anything else (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = {k: v for k, v in base.items() if ALTERNATIVE_KEYS.get(k) not in override}
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def merge_compression(base: Any, override: Any) -> Any:
    """`compression` merges per algorithm: an override for an algorithm that the base already
    has refines it; a different algorithm or a list replaces the base's compression."""
    same_algorithm = (
        isinstance(base, dict)
        and isinstance(override, dict)
        and override.get("algorithm", base.get("algorithm")) == base.get("algorithm")
    )
    if same_algorithm:
        return merge(base, override)
    return copy.deepcopy(override)


def merge_nncf_configs(*configs: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for cfg in configs:
        for key, value in cfg.items():
            if key == "compression" and key in merged:
                merged[key] = merge_compression(merged[key], value)
            elif key in merged:
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


# ---------------------------------------------------------------------------------------------
# Validation against the schema


def validate(data: dict[str, Any], source: str, *, complete: bool) -> list[str]:
    """Check `data` against the schema; raise PresetError naming `source` and the key path.

    `complete=False` checks one source of a merge (keys and types only); `complete=True` checks
    the merged result (each algorithm named, cross-key rules). Returns warnings.
    """
    warnings: list[str] = []
    for key in data:
        if key in schema.SAMPLE_SCRIPT_KEYS:
            warnings.append(
                f"{source}: key '{key}' belongs to NNCF's sample scripts and is ignored "
                "(detcompress takes it from the mmdet config)"
            )
    checked = {k: v for k, v in data.items() if k not in schema.SAMPLE_SCRIPT_KEYS}
    _check(checked, schema.ROOT, "", source)
    for index, algo in enumerate(_as_list(data.get("compression", []))):
        path = "compression" if isinstance(data["compression"], dict) else f"compression[{index}]"
        _check_algorithm(algo, path, source, complete=complete)
    if complete:
        _check_cross_keys(data, source)
    return warnings


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_algorithm(algo: Any, path: str, source: str, *, complete: bool) -> None:
    if not isinstance(algo, dict):
        raise PresetError(
            f"{source}: '{path}' must be a mapping with an 'algorithm' key, got {_type_name(algo)}"
        )
    name = algo.get("algorithm")
    if name is None:
        # A partial entry (to be merged with another source's): its keys must exist somewhere.
        known = {key for spec in schema.ALGORITHMS.values() for key in spec.fields}
        for key in algo:
            if key not in known:
                raise PresetError(
                    f"{source}: unknown key '{path}.{key}'{closest(str(key), known)}; "
                    f"valid keys here: {', '.join(sorted(known))}"
                )
        if complete:
            raise PresetError(
                f"{source}: '{path}' has no 'algorithm'; valid: {', '.join(schema.ALGORITHMS)}"
            )
        return
    if name in schema.REMOVED_ALGORITHMS:
        raise PresetError(
            f"{source}: '{path}.algorithm' is '{name}': {schema.REMOVED_ALGORITHMS[name]}"
        )
    if name not in schema.ALGORITHMS:
        raise PresetError(
            f"{source}: '{path}.algorithm' is '{name}'{closest(str(name), schema.ALGORITHMS)}; "
            f"valid: {', '.join(schema.ALGORITHMS)}"
        )
    _check(algo, schema.ALGORITHMS[name], path, source)


def _check(value: Any, spec: schema.Spec, path: str, source: str) -> None:
    if isinstance(spec, schema.AnyValue):
        return
    if isinstance(spec, schema.OneOrList):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check(item, spec.item, f"{path}[{i}]", source)
        else:
            _check(value, spec.item, path, source)
        return
    if isinstance(spec, schema.Obj):
        if not isinstance(value, dict):
            raise PresetError(
                f"{source}: '{path}' must be a mapping, got {_type_name(value)}"
                if path
                else f"{source}: the nncf_config must be a mapping, got {_type_name(value)}"
            )
        for key, item in value.items():
            key_path = f"{path}.{key}" if path else str(key)
            if key in spec.removed:
                raise PresetError(f"{source}: '{key_path}': {spec.removed[key]}")
            if key not in spec.fields:
                raise PresetError(
                    f"{source}: unknown key '{key_path}'{closest(str(key), spec.fields)}; "
                    f"valid keys here: {', '.join(sorted(spec.fields))}"
                )
            _check(item, spec.fields[key], key_path, source)
        return
    if isinstance(spec, schema.ListOf):
        if not isinstance(value, list):
            raise PresetError(
                f"{source}: '{path}' must be a list of {spec.item.type_name}s, "
                f"got {_type_name(value)}"
            )
        for i, item in enumerate(value):
            _check(item, spec.item, f"{path}[{i}]", source)
        return
    _check_scalar(value, spec, path, source)


def _check_scalar(value: Any, spec: schema.Scalar, path: str, source: str) -> None:
    # bool is an int in Python; a boolean where a number is expected is a mistake.
    wrong_bool = isinstance(value, bool) and bool not in spec.types
    if wrong_bool or not isinstance(value, spec.types):
        raise PresetError(
            f"{source}: '{path}' must be a {spec.type_name}, got {_type_name(value)} {value!r}"
        )
    if spec.choices is not None and value not in spec.choices:
        valid = spec.check_text or ", ".join(map(str, spec.choices))
        raise PresetError(
            f"{source}: '{path}' is {value!r}{closest(str(value), map(str, spec.choices))}; "
            f"valid: {valid}"
        )
    if spec.check is not None and not spec.check(value):
        raise PresetError(f"{source}: '{path}' is {value!r}; it must be {spec.check_text}")


def _type_name(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _check_cross_keys(data: dict[str, Any], source: str) -> None:
    algos = _as_list(data.get("compression", []))
    names = [a["algorithm"] for a in algos]
    for name in set(names):
        if names.count(name) > 1:
            raise PresetError(f"{source}: 'compression' lists '{name}' {names.count(name)} times")
    if "magnitude_sparsity" in names and "rb_sparsity" in names:
        raise PresetError(
            f"{source}: 'compression' combines magnitude_sparsity and rb_sparsity; choose one"
        )
    for index, algo in enumerate(algos):
        path = (
            "compression"
            if len(algos) == 1 and isinstance(data["compression"], dict)
            else (f"compression[{index}]")
        )
        init = algo.get("initializer", {})
        for section, a, b in (
            ("range", "num_init_samples", "num_init_steps"),
            ("batchnorm_adaptation", "num_bn_adaptation_samples", "num_bn_adaptation_steps"),
        ):
            sub = init.get(section, {})
            if a in sub and b in sub:
                raise PresetError(
                    f"{source}: '{path}.initializer.{section}' sets both '{a}' and '{b}'; "
                    f"give one ({b} counts batches, {a} counts images)"
                )
        params = algo.get("params", {})
        steps, levels = params.get("multistep_steps"), params.get("multistep_sparsity_levels")
        if steps is not None or levels is not None:
            steps, levels = steps or [], levels or []
            if len(levels) != len(steps) + 1:
                raise PresetError(
                    f"{source}: '{path}.params': multistep_sparsity_levels has {len(levels)} "
                    f"entries and multistep_steps {len(steps)}; it needs one level more than "
                    "steps (the level before the first step, then one per step)"
                )
            if steps != sorted(steps):
                raise PresetError(
                    f"{source}: '{path}.params.multistep_steps' must be increasing, got {steps}"
                )


# ---------------------------------------------------------------------------------------------
# Typed result


@dataclass(frozen=True)
class InputInfo:
    sample_size: tuple[int, ...]
    type: str = "float"


@dataclass(frozen=True)
class NNCFConfig:
    """The merged, validated nncf_config. `raw` is the merged dict as given (saved in
    checkpoints and exported metadata); the typed fields are what the code reads."""

    raw: dict[str, Any]
    input_info: tuple[InputInfo, ...]
    target_device: str
    algorithms: tuple[Algorithm, ...]
    warnings: tuple[str, ...] = ()
    # NNCF 2's accuracy_aware_training section (or --max-accuracy-drop), when given.
    accuracy_aware: AccuracyAwareTraining | None = None

    @property
    def is_empty(self) -> bool:
        return not self.algorithms

    def algorithm(self, name: str) -> Algorithm | None:
        return next((a for a in self.algorithms if a.name == name), None)

    @property
    def quantization(self) -> Quantization | None:
        found = self.algorithm("quantization")
        return found if isinstance(found, Quantization) else None

    @property
    def sparsity(self) -> Sparsity | None:
        found = next((a for a in self.algorithms if a.name in SPARSITY_ALGORITHMS), None)
        return found if isinstance(found, Sparsity) else None

    @property
    def filter_pruning(self) -> FilterPruning | None:
        found = self.algorithm("filter_pruning")
        return found if isinstance(found, FilterPruning) else None


def build_nncf_config(merged: dict[str, Any], source: str) -> NNCFConfig:
    """Validate the merged config as a whole and turn it into typed objects."""
    warnings = validate(merged, source, complete=True)
    input_info = tuple(
        InputInfo(tuple(item.get("sample_size", ())), item.get("type", "float"))
        for item in _as_list(merged.get("input_info", []))
    )
    algorithms = tuple(algorithm_of(a) for a in _as_list(merged.get("compression", [])))
    section = merged.get(accuracy_aware.SECTION)
    return NNCFConfig(
        raw=copy.deepcopy(merged),
        input_info=input_info,
        target_device=merged.get("target_device", "ANY"),
        algorithms=algorithms,
        warnings=tuple(warnings),
        accuracy_aware=(AccuracyAwareTraining.of(section, source) if section is not None else None),
    )


def with_ignored_operations(
    nncf_config: NNCFConfig, algorithm: str, operations: list[str]
) -> NNCFConfig:
    """`nncf_config` with `operations` added to `algorithm`'s ignored_scopes (exact names, after
    the user's own scopes), so that the stored config rebuilds the same model."""
    merged = copy.deepcopy(nncf_config.raw)
    for algo in _as_list(merged.get("compression", [])):
        if isinstance(algo, dict) and algo.get("algorithm") == algorithm:
            scopes = list(_as_list(algo.get("ignored_scopes", [])))
            algo["ignored_scopes"] = scopes + [op for op in operations if op not in scopes]
    return build_nncf_config(merged, "nncf_config")


def with_constant_pruning_level(raw: dict[str, Any], level: float) -> dict[str, Any]:
    """The nncf_config `raw` with its filter pruning held at `level` from the start (baseline
    schedule, pruning_init = pruning_target = level): one level of an adaptive search."""
    merged = copy.deepcopy(raw)
    for algo in _as_list(merged.get("compression", [])):
        if isinstance(algo, dict) and algo.get("algorithm") == "filter_pruning":
            algo["pruning_init"] = level
            algo["params"] = {
                **(algo.get("params") or {}),
                "schedule": "baseline",
                "pruning_target": level,
                "num_init_steps": 0,
            }
    return merged


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Key paths whose values differ between two nncf_configs (for refusing a mismatch)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(a) + [k for k in b if k not in a]
        out: list[str] = []
        for key in keys:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(path)
            else:
                out += differing_keys(a[key], b[key], path)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            k
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for k in differing_keys(x, y, f"{prefix}[{i}]")
        ]
    return [] if a == b else [prefix or "(whole config)"]
