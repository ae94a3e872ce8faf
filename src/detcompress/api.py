"""One library function per command: plain arguments in, a result object out. The command
modules only parse options and call these."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detcompress.config import LoadedConfig, check_data_paths, load_config
from detcompress.errors import NotAvailableError, OutputExistsError

# ---------------------------------------------------------------------------------------------
# init


def init_demo(directory: Path, seed: int = 0, force: bool = False) -> Path:
    from detcompress.demo import init_demo as write_workspace

    return write_workspace(directory, seed=seed, force=force)


def init_preset(name: str, output: Path | None = None, force: bool = False) -> Path:
    from detcompress.presets import bundled_presets, resolve_preset

    source = resolve_preset(name) if name in bundled_presets() else None
    if source is None:
        resolve_preset(name)  # raises the "unknown preset" error with the valid names
        raise AssertionError("unreachable")
    target = output or Path(f"{name}.yaml")
    if target.exists() and not force:
        raise OutputExistsError(f"{target}: file exists; pass --force to overwrite it")
    from detcompress.io import atomic_write_text

    atomic_write_text(target, source.read_text(encoding="utf-8"))
    return target


# ---------------------------------------------------------------------------------------------
# compress


@dataclass
class CompressPlan:
    """Everything `compress` will do, resolved before anything heavy runs."""

    config: LoadedConfig
    work_dir: Path
    load_from: Path | None
    max_iters: int | None
    max_epochs: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def schedule(self) -> str:
        if self.max_iters is not None:
            return f"{self.max_iters} iterations" if self.max_iters else "no training (evaluate)"
        if self.max_epochs is not None:
            return f"{self.max_epochs} epochs"
        train_cfg = self.config.cfg.get("train_cfg", {})
        if "max_iters" in train_cfg:
            return f"{train_cfg['max_iters']} iterations (from the config)"
        return f"{train_cfg.get('max_epochs', '?')} epochs (from the config)"

    def describe(self) -> str:
        cfg = self.config.cfg
        nncf = self.config.nncf
        model = cfg.model
        dataset = cfg.train_dataloader.get("dataset", {})
        while "dataset" in dataset:
            dataset = dataset["dataset"]
        what = (
            "plain fine-tuning (no nncf_config: NNCF is not imported)"
            if nncf.is_empty
            else "compression: " + ", ".join(a.name for a in nncf.algorithms)
        )
        train_ann = Path(dataset.get("data_root") or "") / (dataset.get("ann_file") or "")
        lines = [
            "# merged nncf_config"
            + (f" (from {' + '.join(self.config.sources)})" if self.config.sources else ""),
            yaml.safe_dump(nncf.raw, sort_keys=False).rstrip() if nncf.raw else "{}",
            "",
            "# plan",
            f"config:      {self.config.path}",
            f"run:         {what}",
            f"model:       {model.get('type')} (backbone {model.get('backbone', {}).get('type')}, "
            f"head {model.get('bbox_head', {}).get('type')})",
            f"train data:  {dataset.get('type')} {train_ann}",
            f"batch size:  {cfg.train_dataloader.get('batch_size')}",
            f"schedule:    {self.schedule}",
            f"load from:   {self.load_from or 'nothing (weights as the config initializes them)'}",
            f"work dir:    {self.work_dir}",
            f"postprocessing compressed: {self.config.compress_postprocessing}",
        ]
        return "\n".join(lines)


@dataclass
class CompressResult:
    work_dir: Path
    checkpoint: Path | None
    metrics: dict[str, float]
    iterations: int
    train_seconds: float
    compressed: bool

    def summary(self) -> str:
        m = self.metrics
        lines = [
            f"work dir:   {self.work_dir}",
            f"checkpoint: {self.checkpoint or '(none written)'}",
        ]
        if not m:
            lines.append(
                "bbox mAP:   none: the model made no detections above the config's score_thr "
                "(mmdet's CocoMetric reports nothing then)"
            )
        if "bbox_mAP" in m:
            nan = float("nan")
            lines.append(
                f"bbox mAP:   {m['bbox_mAP']:.3f}  (mAP50 {m.get('bbox_mAP_50', nan):.3f}, "
                f"mAP75 {m.get('bbox_mAP_75', nan):.3f}) after {self.iterations} iterations"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "work_dir": str(self.work_dir),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "compressed": self.compressed,
            "iterations": self.iterations,
            "train_seconds": round(self.train_seconds, 3),
            **self.metrics,
        }


def plan_compress(
    config: Path,
    preset: str | None = None,
    cfg_options: list[str] | None = None,
    load_from: Path | None = None,
    work_dir: Path | None = None,
    max_iters: int | None = None,
    max_epochs: int | None = None,
) -> CompressPlan:
    loaded = load_config(config, preset, cfg_options)
    cfg = loaded.cfg
    resolved_work_dir = work_dir or Path(cfg.get("work_dir") or Path("work_dirs") / config.stem)
    resolved_load = load_from or (Path(cfg.load_from) if cfg.get("load_from") else None)
    return CompressPlan(
        loaded, resolved_work_dir, resolved_load, max_iters, max_epochs, list(loaded.warnings)
    )


def _strip_prefix(metrics: dict[str, float]) -> dict[str, float]:
    """mmdet's 'coco/bbox_mAP' -> 'bbox_mAP' (as mmdet prints them, fractions in [0, 1])."""
    return {k.split("/", 1)[-1]: v for k, v in metrics.items()}


def compress(
    plan: CompressPlan, trust_checkpoint: bool = False, force: bool = False
) -> CompressResult:
    if not plan.config.nncf.is_empty:
        raise NotAvailableError(
            "compression with NNCF is not available yet in this version; without --preset "
            "and nncf_config, compress fine-tunes in FP32"
        )
    splits = ("val",) if plan.max_iters == 0 else ("train", "val")
    check_data_paths(plan.config.cfg, plan.config.path, splits)
    if plan.load_from is not None and not plan.load_from.is_file():
        from detcompress.errors import CheckpointError

        raise CheckpointError(f"{plan.load_from}: checkpoint file not found (load_from)")
    _claim_work_dir(plan.work_dir, force)

    from detcompress import training

    meta = {
        "compressed": False,
        "nncf_config": plan.config.nncf.raw,
        "config_text": plan.config.cfg.pretty_text,
        "nncf_compress_postprocessing": plan.config.compress_postprocessing,
    }
    result = training.run(
        plan.config.cfg,
        plan.work_dir,
        plan.load_from,
        plan.max_iters,
        plan.max_epochs,
        meta,
        trust_checkpoint=trust_checkpoint,
    )
    return CompressResult(
        result.work_dir,
        result.checkpoint,
        _strip_prefix(result.metrics),
        result.iterations,
        result.train_seconds,
        compressed=False,
    )


def _claim_work_dir(work_dir: Path, force: bool) -> None:
    """Refuse to mix a new run into a work dir that holds checkpoints of an earlier one."""
    existing = sorted(work_dir.glob("*.pth")) if work_dir.is_dir() else []
    if existing and not force:
        raise OutputExistsError(
            f"{work_dir}: holds checkpoints of an earlier run ({existing[0].name}, ...); "
            "choose another --work-dir, or pass --force to write beside them"
        )
    if force and existing:
        # Keep the earlier run's checkpoints, moved aside, never deleted.
        stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime(existing[-1].stat().st_mtime))
        backup = work_dir / f"previous_run_{stamp}"
        backup.mkdir(exist_ok=True)
        for ckpt in existing:
            shutil.move(str(ckpt), backup / ckpt.name)
