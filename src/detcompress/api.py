"""One library function per command: plain arguments in, a result object out. The command
modules only parse options and call these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detcompress import console, patches
from detcompress.config.mmdet_config import LoadedConfig, check_data_paths, load_config
from detcompress.errors import CheckpointError, DetcompressError, OutputExistsError, closest
from detcompress.files import (
    check_output_dir,
    check_output_file,
)
from detcompress.model.detector import unwrapped
from detcompress.model.rebuild import (
    nncf_config_of_checkpoint,
    rebuild_compressed,
    rebuild_structure,
)
from detcompress.train.work_dir import (
    check_something_left_to_train,
    claim_work_dir,
    find_checkpoint,
)

# ---------------------------------------------------------------------------------------------
# init


def init_demo(
    directory: Path,
    seed: int = 0,
    force: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> Path:
    from detcompress.demo.workspace import init_demo as write_workspace

    return write_workspace(directory, seed=seed, force=force, report=report)


def init_preset(name: str, output: Path | None = None, force: bool = False) -> Path:
    from detcompress.config.presets import bundled_presets
    from detcompress.errors import PresetError
    from detcompress.files import atomic_write_text

    bundled = bundled_presets()
    if name not in bundled:
        raise PresetError(
            f"unknown preset '{name}'{closest(name, bundled)}; bundled presets: "
            f"{', '.join(bundled)}"
        )
    target = output or Path(f"{name}.yaml")
    check_output_file(target, "--output")
    if target.exists() and not force:
        raise OutputExistsError(f"{target}: file exists; pass --force to overwrite it")
    atomic_write_text(target, bundled[name].read_text(encoding="utf-8"))
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
    # What --max-iters/--max-epochs change in the config's schedule (train.runner.schedule_changes).
    schedule_notes: list[str] = field(default_factory=list)
    # --max-accuracy-drop or the nncf_config's accuracy_aware_training: the mAP budget, and
    # how it is met: "ptq" (quantizer groups kept in float) or "early_exit" (training stops).
    accuracy_budget: Any = None
    accuracy_mode: str | None = None
    # A compressed --load-from keeps its structure but takes this plan's nncf_config (its
    # schedules continue from the checkpoint's levels): adaptive_compression_level's trials.
    continue_compression: bool = False

    @property
    def schedule(self) -> str:
        if self.accuracy_mode == "adaptive_compression_level":
            from detcompress.train.adaptive_level import SearchSettings

            assert self.config.nncf.accuracy_aware is not None
            search = SearchSettings.of(self.config.nncf.accuracy_aware.params)
            return (
                f"{search.initial_training_phase_epochs} epochs (initial phase), then "
                f"{search.patience_epochs} per level, at most {search.maximal_total_epochs} in all"
            )
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
        if self.accuracy_budget is not None:
            how = {
                "ptq": "quantizer groups kept in float as needed",
                "early_exit": "early_exit: training stops at the first validation within it",
                "adaptive_compression_level": "adaptive_compression_level: the highest "
                "pruning level within it, one fine-tuning run per level",
            }.get(self.accuracy_mode or "", "")
            lines.append(
                f"accuracy:    validation mAP at most {self.accuracy_budget.describe()} below "
                f"the uncompressed model's ({how})"
            )
        if self.schedule_notes:
            lines += ["schedule changes:", *(f"  {note}" for note in self.schedule_notes)]
        return "\n".join(lines)


@dataclass
class CompressResult:
    work_dir: Path
    checkpoint: Path | None
    metrics: dict[str, float]
    iterations: int
    train_seconds: float
    compressed: bool
    compression: dict[str, Any] = field(default_factory=dict)
    # Compression statistics of the final model (sparsity, pruning, quantizers).
    statistics: dict[str, Any] = field(default_factory=dict)
    # --max-accuracy-drop: the search and the final drop (compression/accuracy_control.py).
    accuracy_control: dict[str, Any] = field(default_factory=dict)
    # early_exit: the reference, every validation, the best and where it stopped.
    accuracy_aware: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    # The trained model (unwrapped from DDP), for library callers; not part of the JSON.
    model: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this process reports the run (rank 0 of a distributed run)."""
        return self.rank == 0

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
        best = self.accuracy_aware.get("best") if self.accuracy_aware else None
        if best and "iteration" in best and best["iteration"] != self.iterations:
            # early_exit missed its budget: the checkpoint is the best validation, not the last.
            lines.append(
                f"checkpoint bbox mAP: {best['bbox_mAP']:.3f} (its validation, at iteration "
                f"{best['iteration']}; the line above is the last validation's)"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "work_dir": str(self.work_dir),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "compressed": self.compressed,
            "iterations": self.iterations,
            "train_seconds": round(self.train_seconds, 3),
            "world_size": self.world_size,
            "compression": self.compression,
            "statistics": self.statistics,
            **({"accuracy_control": self.accuracy_control} if self.accuracy_control else {}),
            **({"accuracy_aware": self.accuracy_aware} if self.accuracy_aware else {}),
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
    max_accuracy_drop: str | None = None,
) -> CompressPlan:
    loaded = load_config(config, preset, cfg_options)
    budget, mode = _accuracy_budget(max_accuracy_drop, loaded, max_iters)
    if mode == "adaptive_compression_level" and max_epochs is not None:
        raise DetcompressError(
            f"{config}: adaptive_compression_level trains for its own epochs "
            "(initial_training_phase_epochs, patience_epochs): leave out --max-epochs"
        )
    if mode == "early_exit" and max_iters is None and max_epochs is None:
        assert loaded.nncf.accuracy_aware is not None
        max_epochs = loaded.nncf.accuracy_aware.maximal_total_epochs
    cfg = loaded.cfg
    resolved_work_dir = work_dir or Path(cfg.get("work_dir") or Path("work_dirs") / config.stem)
    resolved_load = load_from or (Path(cfg.load_from) if cfg.get("load_from") else None)
    if mode is not None and resolved_load is None:
        raise DetcompressError(
            f"{config}: an mAP budget is measured against the trained uncompressed model; give "
            "its checkpoint with --load-from (without one the reference mAP is ~0 and any "
            "budget is met at once)"
        )
    check_output_dir(resolved_work_dir, "--work-dir")
    from detcompress.train.runner import schedule_changes

    notes = schedule_changes(cfg, max_iters, max_epochs)
    if mode == "early_exit" and max_iters and _validates_only_at_end(cfg, max_iters):
        notes.append(
            "early exit validates only after initialization and at the end: give a shorter "
            "interval with --cfg-options train_cfg.val_interval=N"
        )
    return CompressPlan(
        loaded,
        resolved_work_dir,
        resolved_load,
        max_iters,
        max_epochs,
        list(loaded.warnings),
        notes,
        budget,
        mode,
    )


def _validates_only_at_end(cfg: Any, max_iters: int) -> bool:
    from detcompress.train.runner import kept_val_interval

    return kept_val_interval(cfg.get("train_cfg") or {}, max_iters) >= max_iters


def _accuracy_budget(
    text: str | None, loaded: LoadedConfig, max_iters: int | None
) -> tuple[Any, str | None]:
    """The mAP budget (--max-accuracy-drop, else the nncf_config's accuracy_aware_training) and
    how it is met: "ptq" with --max-iters 0, else "early_exit". A budget from the command line
    is written into the nncf_config, so that the checkpoints carry it for `resume`."""
    from detcompress.config.accuracy_aware import SECTION, Budget, with_budget
    from detcompress.config.presets import build_nncf_config

    section = loaded.nncf.accuracy_aware
    if text is None and section is None:
        return None, None
    budget = Budget.parse(text) if text is not None else None
    where = "--max-accuracy-drop" if text is not None else f"'{SECTION}'"
    evaluator = loaded.cfg.get("val_evaluator") or {}
    kinds = [e.get("type") for e in (evaluator if isinstance(evaluator, list) else [evaluator])]
    if "CocoMetric" not in kinds:
        raise DetcompressError(
            f"{loaded.path}: {where} compares bbox mAP from a CocoMetric "
            f"val_evaluator; this config's is {', '.join(map(str, kinds)) or 'missing'}"
        )
    names = [a.name for a in loaded.nncf.algorithms]
    if not names:
        raise DetcompressError(
            f"{loaded.path}: {where} needs compression to measure against; give --preset or an "
            "nncf_config with a 'compression' section"
        )
    if section is not None and section.mode == "adaptive_compression_level":
        if names != ["filter_pruning"]:
            raise DetcompressError(
                f"{loaded.path}: '{SECTION}.mode' adaptive_compression_level searches the level "
                f"of filter_pruning alone (this nncf_config: {', '.join(names)}); use "
                "mode: early_exit for other compression"
            )
        if max_iters is not None:
            raise DetcompressError(
                f"{loaded.path}: adaptive_compression_level trains for its own epochs "
                "(initial_training_phase_epochs, patience_epochs per level, "
                "maximal_total_epochs): leave out --max-iters"
            )
        if budget is not None:
            loaded.nncf = build_nncf_config(
                with_budget(loaded.nncf.raw, budget), "--max-accuracy-drop"
            )
        assert loaded.nncf.accuracy_aware is not None
        return loaded.nncf.accuracy_aware.budget, "adaptive_compression_level"
    if max_iters == 0:
        if names != ["quantization"]:
            raise DetcompressError(
                f"{where} with --max-iters 0 keeps quantizer groups in float: it needs an "
                f"nncf_config that quantizes only (this one: {', '.join(names)}); give --preset "
                "int8 or int8_mixed, or train (--max-iters N) to stop at the first validation "
                "within the budget"
            )
        return budget or (section.budget if section else None), "ptq"
    if budget is not None:
        loaded.nncf = build_nncf_config(with_budget(loaded.nncf.raw, budget), "--max-accuracy-drop")
    assert loaded.nncf.accuracy_aware is not None
    return loaded.nncf.accuracy_aware.budget, "early_exit"


def _strip_prefix(metrics: dict[str, float]) -> dict[str, float]:
    """mmdet's 'coco/bbox_mAP' -> 'bbox_mAP' (as mmdet prints them, fractions in [0, 1])."""
    return {k.split("/", 1)[-1]: v for k, v in metrics.items()}


@console.mmengine_output()
def compress(
    plan: CompressPlan,
    trust_checkpoint: bool = False,
    force: bool = False,
    device: str = "auto",
    launcher: str = "none",
    allow_partial_load: bool = False,
) -> CompressResult:
    """Build the detector, load `load_from`, compress it as the nncf_config says (or rebuild the
    compression of a detcompress checkpoint), then fine-tune it through mmengine's Runner;
    with a launcher other than 'none', as one of the processes of a distributed run."""
    # Long on purpose: the steps in the order they must run (checks, processes, model,
    # compression, Runner), in one place so that the order stays visible.
    from detcompress.model import detector
    from detcompress.model.checkpoint import load_checkpoint
    from detcompress.train import distributed

    target_device = _checked_device(launcher, device, "compress")
    if plan.accuracy_mode == "adaptive_compression_level" and launcher == "none":
        return adaptive_compression_level(plan, trust_checkpoint, force, device, allow_partial_load)
    if plan.accuracy_budget is not None and launcher != "none":
        raise DetcompressError(
            "an mAP budget (--max-accuracy-drop, accuracy_aware_training) runs in one process "
            "for now: leave out --launcher"
        )

    loaded = plan.config
    nncf_config = loaded.nncf
    if not nncf_config.is_empty:
        from detcompress.compression.settings import check_settings, require_packages

        require_packages(nncf_config)
        check_settings(nncf_config)
    splits = ("val",) if plan.max_iters == 0 else ("train", "val")
    check_data_paths(loaded.cfg, loaded.path, splits)
    source = load_checkpoint(plan.load_from, trust=trust_checkpoint) if plan.load_from else None
    if plan.accuracy_budget is not None and (detector.detcompress_meta(source) or {}).get(
        "compressed"
    ):
        raise DetcompressError(
            f"{plan.load_from}: already compressed; an mAP budget is measured from the "
            "uncompressed model: give the FP32 checkpoint to --load-from (or `detcompress "
            "resume` an accuracy-aware run)"
        )
    dist = _join_run(launcher, target_device, loaded.cfg, nncf_config)
    distributed.run_on_main(dist, lambda: claim_work_dir(plan.work_dir, force))

    from detcompress.train import runner

    cfg = loaded.cfg
    epochs_interval = _epoch_val_interval(cfg.get("train_cfg") or {})
    runner.prepare_cfg(cfg, plan.work_dir, plan.max_iters, plan.max_epochs)
    if plan.accuracy_mode == "early_exit" and plan.max_epochs is not None:
        # An epoch-based run validates (and saves) only at its end otherwise: early exit needs
        # the config's interval (NNCF 2 validated after every epoch), resume a checkpoint there.
        cfg.train_cfg["val_interval"] = min(epochs_interval, plan.max_epochs)
        cfg.default_hooks.checkpoint["interval"] = cfg.train_cfg["val_interval"]
    model = _build_model(cfg, dist, target_device)
    source_meta = detector.detcompress_meta(source)
    report_lines: list[str] = list(plan.schedule_notes)
    early_exit = None
    report: dict[str, Any] = {}
    if plan.load_from is not None and source_meta and source_meta.get("compressed"):
        if not plan.continue_compression:
            nncf_config = nncf_config_of_checkpoint(plan.load_from, source_meta, nncf_config, force)
        model = rebuild_compressed(model, source_meta, source, plan.load_from)
        report_lines.append(f"compression rebuilt from {plan.load_from} (no re-initialization)")
    else:
        if plan.load_from is not None and source is not None:
            filled = detector.load_weights(model, source, plan.load_from, allow_partial_load)
            report_lines.append(filled.line(plan.load_from))
        if plan.accuracy_mode == "early_exit":
            from detcompress.train.early_exit import EarlyExitState

            early_exit = EarlyExitState(
                _reference_map(cfg, model.to(target_device)), plan.accuracy_budget
            )
        if plan.accuracy_mode == "ptq":
            model, init_report, nncf_config, control = quantize_within_budget(
                cfg, model.to(target_device), nncf_config, plan.accuracy_budget, plan.work_dir
            )
            report_lines += init_report.lines
            report = {**init_report.data, "accuracy_control": control.to_json()}
        elif not nncf_config.is_empty:
            model, init_report = initialize_compression(cfg, model.to(target_device), nncf_config)
            report_lines += init_report.lines
            report = init_report.data
    # Every rank starts from rank 0's weights and compression (see train/distributed.py).
    distributed.broadcast_state(model, dist)
    if dist.is_main:
        for line in _distributed_lines(dist, cfg) + report_lines:
            console.log.info(line)
    if not nncf_config.is_empty:
        from detcompress.compression.settings import compression_lr_multiplier

        runner.scale_compression_lr(cfg, compression_lr_multiplier(nncf_config))

    meta = {
        "nncf_config": nncf_config.raw,
        "config_text": cfg.pretty_text,
        "config_name": loaded.path.name,
        "nncf_compress_postprocessing": loaded.compress_postprocessing,
        "compression_summary": report,
    }
    post_training_only = plan.max_iters == 0
    result = _fine_tune(
        cfg,
        model,
        meta,
        nncf_config,
        dist,
        target_device,
        trust_checkpoint,
        post_training_only,
        early_exit,
    )
    checkpoint = _best_checkpoint(early_exit) or result.checkpoint
    if post_training_only and report:
        # Compression was initialized but nothing trained (post-training quantization): the
        # Runner saved nothing, so save the calibrated model here.
        checkpoint = runner.save_checkpoint(result.runner, plan.work_dir, "ptq.pth")
    compressed = _compress_result(result, checkpoint, nncf_config, report, dist)
    if plan.accuracy_mode == "ptq":
        compressed.accuracy_control = _final_accuracy(report["accuracy_control"], compressed)
    if early_exit is not None:
        compressed.accuracy_aware = early_exit.to_json()
    return compressed


def _epoch_val_interval(train_cfg: Any) -> int:
    """The config's validation interval in epochs (1, NNCF 2's, for an iteration-based one)."""
    epoch_based = train_cfg.get("type") == "EpochBasedTrainLoop" or "max_epochs" in train_cfg
    interval = train_cfg.get("val_interval")
    return int(interval) if epoch_based and isinstance(interval, int) and interval > 0 else 1


def _reference_map(cfg: Any, model: Any) -> float:
    """The uncompressed model's validation mAP, measured once: what a budget is measured from."""
    from detcompress.config.accuracy_aware import METRIC
    from detcompress.measure.evaluation import Validator

    validator = Validator(cfg)
    console.log.info(
        f"accuracy-aware training: validating the uncompressed model on {validator.images} "
        "images (the reference)"
    )
    return validator.metrics(model)[METRIC]


def _best_checkpoint(early_exit: Any) -> Path | None:
    """The checkpoint an early_exit run ends with: its best fully compressed validation."""
    if early_exit is None or not early_exit.best:
        return None
    return Path(early_exit.best["checkpoint"])


def _final_accuracy(search: dict[str, Any], result: CompressResult) -> dict[str, Any]:
    """The search's record with the final model's validation (the checkpoint's number)."""
    from detcompress.compression.accuracy_control import METRIC, points

    final = result.metrics.get(METRIC, 0.0)
    drop = search["reference"] - final
    allowed = search["allowed_drop_points"]
    within = drop * 100 <= allowed + 1e-9
    verdict = "within" if within else f"NOT within (missed by {drop * 100 - allowed:.2f})"
    console.log.info(
        f"accuracy control: final {METRIC} {final:.4f} against float {search['reference']:.4f}: "
        f"drop {points(drop):.2f} points, {verdict} the budget of "
        f"{allowed:.2f}"
    )
    return {
        **search,
        "final": final,
        "final_drop_points": points(drop),
        "final_within_budget": within,
    }


def _checked_device(launcher: str, device: str, command: str) -> Any:
    """The torch device to run on, once the launcher and device are known to be valid."""
    from detcompress.model import detector
    from detcompress.train import distributed

    distributed.check_launcher(launcher, command)
    return detector.select_device(device)


def _join_run(launcher: str, device: Any, cfg: Any, nncf_config: Any) -> Any:
    """This process's place in the run (distributed or not), checked against the compression."""
    from detcompress.train import distributed

    dist = distributed.init(launcher, device, cfg)
    if not nncf_config.is_empty:
        from detcompress.compression.settings import check_distributed

        check_distributed(nncf_config, dist.world_size)
    return dist


def _build_model(cfg: Any, dist: Any, device: Any) -> Any:
    from detcompress.model import detector
    from detcompress.train import distributed

    model = detector.build_detector(cfg)
    return distributed.revert_sync_batchnorm_on_cpu(model, dist, device)


def _distributed_lines(dist: Any, cfg: Any) -> list[str]:
    if not dist.distributed:
        return []
    batch_size = cfg.train_dataloader.get("batch_size", 1)
    return [dist.describe(batch_size, cfg.get("auto_scale_lr"))]


def _fine_tune(
    cfg: Any,
    model: Any,
    meta: dict[str, Any],
    nncf_config: Any,
    dist: Any,
    device: Any,
    trust_checkpoint: bool,
    evaluate_only: bool = False,
    early_exit: Any = None,
) -> Any:
    """The Runner's part, the same for compress and resume: train (or only validate); with an
    `early_exit` state, stop at the first validation within its mAP budget."""
    from detcompress.train import distributed, runner

    patches.mark_initialized(model)
    distributed.configure_runner(cfg, dist, device)  # after meta's config_text: not stored
    return runner.run(
        cfg,
        model,
        meta,
        _structure_fn(nncf_config),
        trust_checkpoint=trust_checkpoint,
        evaluate_only=evaluate_only,
        hooks=_compression_hooks(nncf_config, early_exit),
    )


def _compress_result(
    result: Any, checkpoint: Path | None, nncf_config: Any, compression: dict, dist: Any
) -> CompressResult:
    return CompressResult(
        result.work_dir,
        checkpoint,
        _strip_prefix(result.metrics),
        result.iterations,
        result.train_seconds,
        compressed=not nncf_config.is_empty,
        compression=compression,
        statistics=_final_statistics(result.runner.model, nncf_config),
        rank=dist.rank,
        world_size=dist.world_size,
        model=unwrapped(result.runner.model),
    )


def _final_statistics(model: Any, nncf_config: Any) -> dict[str, Any]:
    if nncf_config.is_empty:
        return {}
    from detcompress.compression.statistics import statistics

    return statistics(unwrapped(model), nncf_config)


def _structure_fn(nncf_config: Any) -> Callable[[Any], dict[str, Any] | None]:
    """What a checkpoint stores of the compression: its structure, with the statistics."""
    if nncf_config.is_empty:
        return lambda model: None
    from detcompress.compression.pipeline import model_structure
    from detcompress.compression.statistics import statistics

    def structure(model: Any) -> dict[str, Any] | None:
        found = model_structure(model)
        if found is not None:
            found["statistics"] = statistics(model, nncf_config)
        return found

    return structure


def _compression_hooks(nncf_config: Any, early_exit: Any = None) -> list[Any]:
    """The schedules (sparsity, pruning) and the statistics after each validation; the early
    exit, which asks the schedules whether the model is fully compressed."""
    if nncf_config.is_empty:
        return []
    from detcompress.train.compression_hook import CompressionScheduleHook

    schedules = CompressionScheduleHook(nncf_config)
    if early_exit is None:
        return [schedules]
    from detcompress.train.early_exit import EarlyExitHook

    return [schedules, EarlyExitHook(early_exit, schedules.fully_compressed)]


def quantize_within_budget(
    cfg: Any, model: Any, nncf_config: Any, budget: Any, work_dir: Path
) -> tuple[Any, Any, Any, Any]:
    """Post-training quantization with the fewest quantizer groups kept in float for the
    validation mAP to stay within `budget` of the float model's (compression/accuracy_control):
    (quantized model, its initialization report, the nncf_config with those operations in
    ignored_scopes, the search's result). The search's report goes to the work dir."""
    import json

    import torch

    from detcompress.compression import accuracy_control, nncf_adapter
    from detcompress.config.presets import with_ignored_operations
    from detcompress.files import atomic_write_text
    from detcompress.measure.evaluation import Validator

    validator = Validator(cfg)
    metric = accuracy_control.METRIC
    console.log.info(f"accuracy control: validating the float model on {validator.images} images")
    reference = validator.metrics(model)[metric]
    quantized, init_report = initialize_compression(cfg, model, nncf_config)
    inputs = validator.inputs(model, accuracy_control.RANKING_IMAGES)
    with torch.no_grad():
        model.eval()
        float_outputs = [model(x) for x in inputs]
    groups = nncf_adapter.quantizer_groups(quantized, model, inputs[0])
    console.log.info(
        f"accuracy control: ranking {len(groups)} quantizer groups on {len(inputs)} batches"
    )
    ranking = accuracy_control.rank_groups(groups, quantized, inputs, float_outputs)
    top = min(10, len(ranking))
    console.log.info(f"accuracy control: validating the top {top} groups one by one in float")
    accuracy_control.measure_map_costs(
        ranking, groups, lambda: validator.metrics(quantized)[metric], top
    )
    allowed = budget.allowed(reference)
    # The model of each validated prefix, kept while it may be the answer: the latest within
    # budget (prefixes within budget only get shorter) or, failing all, every group in float.
    built: dict[int, tuple[Any, Any, Any]] = {}

    def evaluate(count: int) -> float:
        if count == 0:
            candidate = (quantized, init_report, nncf_config)
        else:
            operations = sorted(op for group in ranking[:count] for op in group.operations)
            config = with_ignored_operations(nncf_config, "quantization", operations)
            candidate = (*initialize_compression(cfg, model, config), config)
        value = validator.metrics(candidate[0])[metric]
        if reference - value <= allowed or count == len(ranking):
            built.clear()
            built[count] = candidate
        return value

    result = accuracy_control.search(ranking, evaluate, reference, budget, console.log.info)
    quantized, init_report, nncf_config = built.get(
        result.kept_in_float, (quantized, init_report, nncf_config)
    )
    init_report.lines.extend(result.lines())
    atomic_write_text(work_dir / "accuracy_control.json", json.dumps(result.to_json(), indent=2))
    return quantized, init_report, nncf_config, result


def adaptive_compression_level(
    plan: CompressPlan,
    trust_checkpoint: bool,
    force: bool,
    device: str,
    allow_partial_load: bool = False,
) -> CompressResult:
    """NNCF 2's adaptive_compression_level for filter pruning (`train/adaptive_level.py`): the
    uncompressed model is validated once, then each pruning level is a fine-tuning run of its
    own (`WORK_DIR/level_X/`), and the highest level within the budget is the answer, linked
    as `WORK_DIR/best_pruning_level_X.pth`."""
    import copy
    import json

    from detcompress.config.accuracy_aware import SECTION
    from detcompress.config.presets import build_nncf_config, with_constant_pruning_level
    from detcompress.files import atomic_write_text
    from detcompress.model import detector
    from detcompress.model.checkpoint import load_checkpoint
    from detcompress.train.adaptive_level import LevelSearch, SearchSettings

    loaded = plan.config
    aware = loaded.nncf.accuracy_aware
    assert aware is not None and plan.accuracy_budget is not None
    settings = SearchSettings.of(aware.params)
    check_data_paths(loaded.cfg, loaded.path, ("train", "val"))
    source = load_checkpoint(plan.load_from, trust=trust_checkpoint) if plan.load_from else None
    if (detector.detcompress_meta(source) or {}).get("compressed"):
        raise DetcompressError(
            f"{plan.load_from}: already compressed; adaptive_compression_level starts from the "
            "uncompressed model: give the FP32 checkpoint to --load-from"
        )
    claim_work_dir(plan.work_dir, force)
    _claim_trial_dirs(plan.work_dir, force)
    pristine = copy.deepcopy(loaded.cfg)
    base_raw = {k: v for k, v in loaded.nncf.raw.items() if k != SECTION}

    reference_cfg = copy.deepcopy(pristine)
    model = detector.build_detector(reference_cfg).to(detector.select_device(device))
    if source is not None and plan.load_from is not None:
        detector.load_weights(model, source, plan.load_from, allow_partial_load)
    search = LevelSearch(_reference_map(reference_cfg, model), plan.accuracy_budget, settings)
    del model
    report_path = plan.work_dir / "accuracy_aware.json"

    def trial(level: float | None, epochs: int) -> CompressResult:
        # The initial phase keeps the config's own schedule.
        raw = with_constant_pruning_level(base_raw, level) if level is not None else base_raw
        start = search.start_for(level) if level is not None else None
        name = f"level_{level:.4f}" if level is not None else "initial_phase"
        trial_plan = CompressPlan(
            LoadedConfig(
                loaded.path,
                copy.deepcopy(pristine),
                build_nncf_config(raw, f"{loaded.path} (level {level})"),
                loaded.compress_postprocessing,
                loaded.sources,
            ),
            plan.work_dir / name,
            Path(start["checkpoint"]) if start else plan.load_from,
            None,
            epochs,
            continue_compression=start is not None,
        )
        console.log.info(
            f"adaptive compression level: {name}: {epochs} epoch(s) from "
            + (f"the level {start['level']:g} model" if start else "the uncompressed model")
        )
        result = compress(
            trial_plan,
            trust_checkpoint,
            force=False,
            device=device,
            allow_partial_load=allow_partial_load,
        )
        from detcompress.compression.state import state_of

        state = state_of(result.model)
        reached = float(state.pruning_level) if state and state.pruning_level else 0.0
        entry = search.record(
            reached,
            result.metrics.get("bbox_mAP", 0.0),
            epochs,
            str(result.checkpoint),
            start["checkpoint"] if start else str(plan.load_from),
        )
        console.log.info(
            f"adaptive compression level: level {entry['level']:g}: bbox_mAP "
            f"{entry['bbox_mAP']:.4f}, drop {entry['drop_points']:.2f} points, "
            + ("within the budget" if entry["within_budget"] else "over the budget")
        )
        atomic_write_text(report_path, json.dumps(search.to_json(), indent=2))
        results[len(search.trials) - 1] = result
        # Only the best level's model and the smallest drop's can be returned: free the rest.
        wanted = {id(search.best), id(min(search.trials, key=lambda t: t["drop_points"]))}
        for index, kept in results.items():
            if id(search.trials[index]) not in wanted:
                kept.model = None
        return result

    results: dict[int, CompressResult] = {}
    trial(None, settings.initial_training_phase_epochs)
    while (level := search.next_level()) is not None:
        trial(level, settings.patience_epochs)
    atomic_write_text(report_path, json.dumps(search.to_json(), indent=2))
    console.log.info(f"adaptive compression level: {search.verdict()}")
    best = search.best
    if best is None:
        chosen = min(range(len(search.trials)), key=lambda i: search.trials[i]["drop_points"])
        final = results.get(chosen) or next(iter(results.values()))
    else:
        index = search.trials.index(best)
        final = results[index]
        final.checkpoint = _linked(Path(best["checkpoint"]), plan.work_dir, best["level"])
        console.log.info(f"adaptive compression level: best checkpoint {final.checkpoint}")
    final.work_dir = plan.work_dir
    final.accuracy_aware = search.to_json()
    return final


def _claim_trial_dirs(work_dir: Path, force: bool) -> None:
    """An earlier search's level folders: refused, or with --force moved aside (never deleted)
    before anything runs, as claim_work_dir does for checkpoints."""
    import shutil
    import time

    earlier = [
        d
        for d in [work_dir / "initial_phase", *sorted(work_dir.glob("level_*"))]
        if d.is_dir() and any(d.glob("*.pth"))
    ]
    if not earlier:
        return
    if not force:
        raise OutputExistsError(
            f"{work_dir}: holds an earlier level search ({earlier[0].name}/, ...); choose "
            "another --work-dir, or pass --force to move it aside"
        )
    backup = work_dir / f"previous_run_{time.strftime('%Y%m%d_%H%M%S')}"
    backup.mkdir(exist_ok=True)
    for folder in earlier:
        shutil.move(str(folder), backup / folder.name)


def _linked(checkpoint: Path, work_dir: Path, level: float) -> Path:
    """The chosen trial's checkpoint under a name that says its level, in the work dir."""
    import os
    import shutil

    target = work_dir / f"best_pruning_level_{level:.4f}.pth"
    target.unlink(missing_ok=True)
    try:
        os.link(checkpoint, target)
    except OSError:  # another file system: a copy
        shutil.copy2(checkpoint, target)
    return target


def initialize_compression(cfg: Any, model: Any, nncf_config: Any) -> tuple[Any, Any]:
    from detcompress.compression.pipeline import compress_model
    from detcompress.compression.settings import calibration_batches_needed
    from detcompress.train.runner import calibration_batches

    batch_size = cfg.train_dataloader.get("batch_size", 1)
    batches = calibration_batches(cfg, calibration_batches_needed(nncf_config, batch_size))
    model.eval()

    def to_inputs(batch: Any) -> Any:
        return model.data_preprocessor(batch, False)["inputs"]

    return compress_model(model, nncf_config, batches, to_inputs, batch_size)


# ---------------------------------------------------------------------------------------------
# resume


@console.mmengine_output()
def resume(
    target: Path,
    max_iters: int | None = None,
    work_dir: Path | None = None,
    config: Path | None = None,
    preset: str | None = None,
    cfg_options: list[str] | None = None,
    trust_checkpoint: bool = False,
    force: bool = False,
    device: str = "auto",
    launcher: str = "none",
) -> CompressResult:
    """Continue a detcompress run from its checkpoint alone: config, data, model and
    compression come from the checkpoint; iteration, optimizer and LR state too. Any number of
    processes can resume a run of any number of processes."""
    # Long on purpose: as compress, the steps in the order they must run.
    from detcompress.config.presets import build_nncf_config, read_preset_file, resolve_preset
    from detcompress.config.stored import read_stored_config
    from detcompress.model import detector
    from detcompress.model.checkpoint import load_checkpoint
    from detcompress.train import distributed, runner

    target_device = _checked_device(launcher, device, "resume")

    check_output_dir(work_dir, "--work-dir")
    path = find_checkpoint(target)
    checkpoint = load_checkpoint(path, trust=trust_checkpoint)
    meta = detector.detcompress_meta(checkpoint)
    if meta is None:
        raise CheckpointError(
            f"{path}: not written by detcompress (no meta.detcompress); to continue from it, "
            f"run `detcompress compress CONFIG --load-from {path}`"
        )
    stored = build_nncf_config(meta.get("nncf_config") or {}, f"{path} (nncf_config)")
    if config is not None or preset is not None:
        if config is not None:
            requested = load_config(config, preset, cfg_options).nncf.raw
        else:
            assert preset is not None
            requested = read_preset_file(resolve_preset(preset))
        nncf_config_of_checkpoint(path, meta, build_nncf_config(requested, "requested"), force)

    cfg = read_stored_config(
        meta["config_text"], path, trust_checkpoint, meta.get("config_name", "config.py")
    )
    if max_iters is not None:
        runner.set_schedule(cfg, max_iters, None)
    runner.share_parameters_safely(cfg)
    # Where the checkpoint is, not the work dir recorded in it: a run copied elsewhere must
    # not write into the original.
    cfg.work_dir = str(work_dir or path.parent)
    done = int(checkpoint.get("meta", {}).get("iter", 0))
    check_something_left_to_train(path, cfg, checkpoint, max_iters)
    early_exit = _resumed_early_exit(path, meta, stored)
    if early_exit is not None and launcher != "none":
        raise DetcompressError(
            f"{path}: an accuracy-aware run resumes in one process for now: leave out --launcher"
        )
    dist = _join_run(launcher, target_device, cfg, stored)
    distributed.run_on_main(
        dist, lambda: claim_work_dir(Path(cfg.work_dir), force, after_iteration=done)
    )
    cfg.resume = True
    cfg.load_from = str(path)

    model = _build_model(cfg, dist, target_device)
    if dist.is_main:
        for line in _distributed_lines(dist, cfg):
            console.log.info(line)
    if meta.get("compressed"):
        # Structure only: the Runner's resume loads weights, optimizer and schedule.
        model = rebuild_structure(model, meta, path)
    run_meta = {
        k: v
        for k, v in meta.items()
        if k not in ("compressed", "structure", "versions", "accuracy_aware")
    }
    result = _fine_tune(
        cfg, model, run_meta, stored, dist, target_device, trust_checkpoint, early_exit=early_exit
    )
    compression = meta.get("compression_summary") or {}
    checkpoint = _best_checkpoint(early_exit) or result.checkpoint
    resumed = _compress_result(result, checkpoint, stored, compression, dist)
    if early_exit is not None:
        resumed.accuracy_aware = early_exit.to_json()
    return resumed


def _resumed_early_exit(path: Path, meta: dict[str, Any], stored: Any) -> Any:
    """The early_exit state a checkpoint of an accuracy-aware run carries (reference measured
    once, validations so far), or None for other runs."""
    if stored.accuracy_aware is None:
        return None
    from detcompress.train.early_exit import META_KEY, EarlyExitState

    data = meta.get(META_KEY)
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: its nncf_config has accuracy_aware_training but the checkpoint has no "
            "accuracy-aware state (meta.detcompress.accuracy_aware); it was not written by an "
            "accuracy-aware run"
        )
    state = EarlyExitState.from_json(data)
    if state.stopped is not None:
        raise CheckpointError(
            f"{path}: this accuracy-aware run already ended within its budget at iteration "
            f"{state.stopped['iteration']} ({state.best and state.best.get('checkpoint')}); to "
            f"fine-tune that model further, run `detcompress compress CONFIG --load-from "
            f"{(state.best or {}).get('checkpoint', path)}`"
        )
    return state
