"""A run's work dir: claimed without overwriting what an earlier run left (moved aside with
--force, never deleted), its latest complete checkpoint, and whether a checkpoint has anything
left to train."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from detcompress.errors import CheckpointError, OutputExistsError
from detcompress.files import checkpoint_iteration, latest_checkpoint, looks_complete


def claim_work_dir(work_dir: Path, force: bool, after_iteration: int = -1) -> None:
    """Refuse to mix a run into a work dir holding checkpoints it would overwrite (for a
    resumed run: checkpoints after the iteration it resumes from). With `force` they are moved
    aside, never deleted: complete ones to `previous_run_<time>/`, unreadable ones (an
    interrupted save of an older version) to `corrupt_<time>/`."""
    from detcompress.files import remove_stale_temporaries

    if work_dir.exists() and not work_dir.is_dir():
        raise OutputExistsError(f"{work_dir}: is a file; --work-dir must be a folder")
    if not work_dir.is_dir():
        return
    remove_stale_temporaries(work_dir)  # left by a process killed while saving
    existing = [
        p
        for p in sorted(work_dir.glob("*.pth"))
        if after_iteration < 0 or checkpoint_iteration(p) > after_iteration
    ]
    corrupt = [p for p in existing if not looks_complete(p)]
    if existing and not force:
        what = "an earlier run" if after_iteration < 0 else f"iterations after {after_iteration}"
        state = f"; {corrupt[0].name} is truncated or corrupt" if corrupt else ""
        raise OutputExistsError(
            f"{work_dir}: holds checkpoints of {what} ({existing[0].name}, ...){state}; choose "
            "another --work-dir, or pass --force to move them aside"
        )
    stamp = time.strftime("%Y%m%d_%H%M%S")
    for ckpt in existing:
        backup = work_dir / f"{'corrupt' if ckpt in corrupt else 'previous_run'}_{stamp}"
        backup.mkdir(exist_ok=True)
        shutil.move(str(ckpt), backup / ckpt.name)


def find_checkpoint(target: Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a work dir."""
    if target.is_file():
        return target
    if target.is_dir():
        latest = latest_checkpoint(target)
        if latest is not None:
            return latest
        found = sorted(target.glob("*_*.pth"))
        state = f" (its {found[-1].name} is truncated or corrupt)" if found else ""
        raise CheckpointError(
            f"{target}: work dir holds no checkpoint (iter_*.pth, epoch_*.pth){state}"
        )
    raise CheckpointError(f"{target}: no such checkpoint file or work dir")


def check_something_left_to_train(
    path: Path, cfg: Any, checkpoint: dict[str, Any], max_iters: int | None
) -> None:
    """A finished run, a post-training checkpoint or a --max-iters at or below the checkpoint's
    iteration would only validate again: say so instead of "succeeding"."""
    meta = checkpoint.get("meta") or {}
    train_cfg = cfg.get("train_cfg") or {}
    if "max_epochs" in train_cfg and "max_iters" not in train_cfg:
        done, end, unit = int(meta.get("epoch", 0)), int(train_cfg["max_epochs"]), "epoch"
    else:
        done, end, unit = int(meta.get("iter", 0)), int(train_cfg.get("max_iters", 0)), "iteration"
    if end == 0 or "optimizer" not in checkpoint:
        raise CheckpointError(
            f"{path}: a post-training (--max-iters 0) checkpoint has no training to resume; to "
            f"fine-tune it, run `detcompress compress CONFIG --load-from {path} --max-iters N`"
        )
    if done >= end:
        why = f"--max-iters {max_iters}" if max_iters is not None else "the run's schedule"
        raise CheckpointError(
            f"{path}: nothing to train: the checkpoint is at {unit} {done} and {why} ends at "
            f"{end}; pass --max-iters N with N > {done} to train further"
        )
