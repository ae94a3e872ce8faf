"""A config stored in a model file is data, never code.

detcompress checkpoints (`meta.detcompress.config_text`), mmengine checkpoints (`meta.cfg`),
exported IRs (`rt_info`) and ONNX files (`metadata_props`) carry the resolved mmdet config as
Python text. Executing that text (mmengine's `Config.fromstring`) would run whatever a file
from elsewhere puts in it, so without `--trust-checkpoint` it is read here instead:

1. Parsed, never executed: only `name = <literal>` assignments, where a literal is a number,
   string, bool, None, list, tuple, `{...}` or `dict(key=...)` — what `Config.pretty_text`
   writes. Anything else (a call, an import, an attribute, an expression) is refused.
2. Data that mmengine/mmcv/mmdet would turn into code is refused too: a `type` that no
   registry holds (mmengine's `Registry.get` then imports it by its dotted name, e.g.
   `subprocess.Popen`), a registry scope that is not loaded (it imports `<scope>.registry`),
   `custom_imports`, and the few option strings that a dependency passes to `eval`
   (`EVALUATED_STRINGS`).

The user's own config file (`compress CONFIG`, `--config`) is Python, as in mmdet.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from detcompress.errors import CheckpointError

TRUST_FLAG = "--trust-checkpoint"

# Option strings that a dependency evaluates with `eval`, and what a legitimate one looks like.
# mmcv's `batched_nms` evaluates `nms.type` in mmcv/ops/nms.py; mmdet's
# `CameraMotionCompensation` evaluates `warp_mode`.
NMS_TYPES = ("nms", "soft_nms")
NMS_TYPE_PATH = re.compile(r"(^|\.)\w*nms\w*\.type$")
# Types that mmdet looks up as an attribute of a module instead of a registry (no import, no
# eval): RoI extractors take `getattr(mmcv.ops, roi_layer.type)`.
MODULE_ATTRIBUTE_TYPES = {re.compile(r"(^|\.)roi_layer\.type$"): "mmcv.ops"}
EVALUATED_STRINGS = {"warp_mode": re.compile(r"cv2\.MOTION_[A-Z_]+")}
# Registered types whose options are evaluated as Python (mmcv's RFSearchHook: `eval(op)`).
EVALUATING_TYPES = ("RFSearchHook",)


class _Refused(Exception):
    def __init__(self, what: str, node: ast.AST | SyntaxError | None = None) -> None:
        line = getattr(node, "lineno", None)
        super().__init__(f"{what} (line {line})" if line else what)


def read_stored_config(text: str, source: Path | str, trust: bool, filename: str) -> Any:
    """The mmengine `Config` stored as `text` in the model file `source`.

    `filename` is what the Runner names its copy of the config in a work dir. With `trust`,
    the text is executed as mmengine does; without, it is read as data only (see above), and
    anything else is a one-line `CheckpointError` that names `--trust-checkpoint`.
    """
    from mmengine.config import Config

    if trust:
        cfg = Config.fromstring(text, file_format=".py")
        return Config(cfg.to_dict(), cfg_text=text, filename=filename)
    try:
        values = literal_assignments(text)
        check_names_resolve_without_imports(values)
    except _Refused as exc:
        raise CheckpointError(
            f"{source}: the config stored in it is not plain data: {exc}; a config inside a "
            f"model file is never executed unless you pass {TRUST_FLAG} (only for files you "
            "trust), or give your own config file with --config"
        ) from None
    return Config(values, cfg_text=text, filename=filename)


# ---------------------------------------------------------------------------------------------
# 1. Literals only


def literal_assignments(text: str) -> dict[str, Any]:
    """`{name: value}` of a text made only of `name = <literal>` statements."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise _Refused(f"not valid Python text ({exc.msg})", exc) from None
    values: dict[str, Any] = {}
    for statement in tree.body:
        if not (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            raise _Refused(f"a statement that is not `name = value`: {_snippet(statement)}",
                           statement)  # fmt: skip
        name = statement.targets[0].id
        value = _literal(statement.value)
        if not name.startswith("__"):  # mmengine drops these names too
            values[name] = value
    if "_base_" in values:
        raise _Refused("it inherits other files (`_base_`)")
    return values


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and not isinstance(node.value, bytes):
        return node.value
    if isinstance(node, ast.List):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(item) for item in node.elts)
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise _Refused(f"a `**` expansion: {_snippet(node)}", node)
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and not node.args
        and all(keyword.arg is not None for keyword in node.keywords)
    ):
        return {keyword.arg: _literal(keyword.value) for keyword in node.keywords}
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        value = node.operand.value
        return -value if isinstance(node.op, ast.USub) else value
    raise _Refused(f"an expression that is not a literal: {_snippet(node)}", node)


def _snippet(node: ast.AST) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return f"`{text[:60]}{'...' if len(text) > 60 else ''}`"


# ---------------------------------------------------------------------------------------------
# 2. Names that would import or evaluate code


def check_names_resolve_without_imports(values: dict[str, Any]) -> None:
    """Refuse data that mmengine, mmcv or mmdet would turn into an import or an `eval`."""
    if values.get("custom_imports"):
        raise _Refused("it imports modules (`custom_imports`)")
    from detcompress.patches import registry_imports_disabled

    registries, scopes = _loaded_registries()
    # The inline nncf_config is detcompress's own data (its `type`s are NNCF range types, not
    # registry names), validated by the preset schema and never built by a registry.
    built = {key: value for key, value in values.items() if key != "nncf_config"}
    with registry_imports_disabled():
        for path, key, value in _walk(built):
            if key in ("_scope_", "default_scope"):
                if value is not None and value not in scopes:
                    raise _Refused(f"{path}: unknown registry scope {value!r}")
            elif key == "type":
                _check_type(path, value, registries, scopes)
            elif key in EVALUATED_STRINGS and not (
                isinstance(value, str) and EVALUATED_STRINGS[key].fullmatch(value)
            ):
                raise _Refused(f"{path}: {value!r} would be evaluated as Python")


def _check_type(path: str, value: Any, registries: list[Any], scopes: set[str]) -> None:
    if not isinstance(value, str):
        raise _Refused(f"{path}: {value!r} is not a type name")
    if NMS_TYPE_PATH.search(path):  # mmcv's batched_nms: eval(type) in mmcv.ops.nms
        if value not in NMS_TYPES:
            raise _Refused(f"{path}: {value!r} is not one of mmcv's NMS ops {NMS_TYPES}")
        return
    for pattern, module_name in MODULE_ATTRIBUTE_TYPES.items():
        if pattern.search(path):
            import importlib

            if not (value.isidentifier() and hasattr(importlib.import_module(module_name), value)):
                raise _Refused(f"{path}: {value!r} is not a name in {module_name}")
            return
    if value in EVALUATING_TYPES:
        raise _Refused(f"{path}: {value} evaluates its options as Python")
    scope, dot, _ = value.rpartition(".")
    if dot and scope not in scopes:
        raise _Refused(f"{path}: {value!r} is not a registered type (scope {scope!r} unknown)")
    if not any(registry.get(value) is not None for registry in registries):
        raise _Refused(f"{path}: {value!r} is not a registered mmdet/mmengine type")


def _loaded_registries() -> tuple[list[Any], set[str]]:
    """Every registry of mmdet and mmengine, and the scopes of the registry trees."""
    import mmdet.registry
    import mmengine.registry
    from mmdet.utils import register_all_modules
    from mmengine.registry import Registry

    register_all_modules(init_default_scope=False)
    registries = [
        value
        for module in (mmdet.registry, mmengine.registry)
        for value in vars(module).values()
        if isinstance(value, Registry)
    ]
    scopes: set[str] = set()
    for registry in registries:
        root = registry
        while root.parent is not None:
            root = root.parent
        scopes.add(root.scope)
        scopes.update(root.children)
    return registries, scopes


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) of every dict entry, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            yield where, str(key), item
            yield from _walk(item, where)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")
