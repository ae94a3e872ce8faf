"""Files on disk: atomic outputs (temporary folder next to the target, then rename) and the
checkpoints of a work dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(target: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it becomes `target`.

    On failure the temporary folder is removed and `target` is left as it was. With `replace`,
    an existing `target` is swapped out only after the new content is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        if target.exists():
            if not replace and any(target.iterdir()):
                raise FileExistsError(target)
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_text(target: Path, text: str) -> None:
    """Write a file through a temporary file in the same folder and an atomic rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is ordinary
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def checkpoint_iteration(path: Path) -> int:
    """The number in mmengine's `iter_N.pth` / `epoch_N.pth`, or -1."""
    digits = path.stem.split("_")[-1]
    return int(digits) if digits.isdigit() else -1


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The checkpoint mmengine's `last_checkpoint` marker names, else the highest numbered one."""
    marker = work_dir / "last_checkpoint"
    if marker.is_file():
        latest = Path(marker.read_text().strip())
        if latest.is_file():
            return latest
    found = sorted(work_dir.glob("iter_*.pth"), key=checkpoint_iteration) or sorted(
        work_dir.glob("epoch_*.pth"), key=checkpoint_iteration
    )
    return found[-1] if found else None
