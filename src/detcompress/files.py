"""Files on disk: atomic outputs (temporary folder next to the target, then rename) and the
checkpoints of a work dir."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from detcompress.errors import OutputExistsError


def check_output_file(path: Path | None, option: str) -> None:
    """Before any work: `path` can be written as a file (not a folder, its folder writable)."""
    if path is None:
        return
    if path.is_dir():
        raise OutputExistsError(f"{option} {path}: is a folder; expected a file name to write")
    _check_parent_writable(path, option)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputExistsError(f"{option} {path}: the file is not writable")


def check_output_dir(path: Path | None, option: str) -> None:
    """Before any work: `path` can be made or written into as a folder."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{option} {path}: is a file; expected a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputExistsError(f"{option} {path}: the folder is not writable")
        return
    _check_parent_writable(path, option)


def _check_parent_writable(path: Path, option: str) -> None:
    """The nearest existing folder above `path` is a writable folder (not a file)."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputExistsError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputExistsError(f"{option} {path}: cannot write into {ancestor}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """Yield a new temporary folder beside `target`, removed when the block ends.

    Its name carries this process's id, so that a folder left by a process that was killed
    (SIGKILL, power loss) is recognised and removed by the next run."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    )
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_stale_staging(target: Path) -> None:
    """Remove the temporary folders and files that killed processes left beside `target`."""
    _remove_stale(target.parent, re.escape(target.name))


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files and folders that killed processes left in `folder`."""
    _remove_stale(folder, ".+?")


def _remove_stale(folder: Path, name: str) -> None:
    """Leftovers are named `.<name>.[old.]<pid>[.<random>].tmp` (see `_atomic_file`,
    `staging_dir`, `atomic_dir`); those of processes no longer running are removed."""
    pattern = re.compile(rf"\.(?:{name})\.(?:old\.)?(\d+)(?:\..*)?\.tmp")
    for leftover in folder.glob(".*.tmp"):
        found = pattern.fullmatch(leftover.name)
        if found and not _process_alive(int(found.group(1))):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier call that failed to clean up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(target: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it becomes `target`.

    On failure the temporary folder is removed and `target` is left as it was. With `replace`,
    an existing `target` folder is swapped out only after the new content is complete; a file
    at `target` is never replaced.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target}: is a file; expected a folder to write into")
    with staging_dir(target) as tmp:
        yield tmp
        if target.exists():
            if not replace and any(target.iterdir()):
                raise FileExistsError(target)
            old = target.with_name(f".{target.name}.old.{os.getpid()}.tmp")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """A binary file to write, beside `target`; when the block ends without an error it is
    flushed to disk and renamed to `target`, so a reader sees the old file or the complete new
    one, never a truncated one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise OutputExistsError(f"{target}: is a folder; expected a file name to write")
    remove_stale_staging(target)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is ordinary
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(target: Path, text: str) -> None:
    """Write a text file atomically (see `_atomic_file`)."""
    with _atomic_file(target) as f:
        f.write(text.encode("utf-8"))


def atomic_torch_save(obj: Any, target: Path | str) -> None:
    """torch.save atomically (see `_atomic_file`)."""
    import torch

    with _atomic_file(Path(target)) as f:
        torch.save(obj, f)


def looks_complete(checkpoint: Path) -> bool:
    """Whether a .pth file is a complete zip archive, as torch.save writes (cheap: the central
    directory at its end is missing from a truncated file)."""
    import zipfile

    if zipfile.is_zipfile(checkpoint):
        return True
    with open(checkpoint, "rb") as f:  # torch's legacy format: a pickle stream, not checked
        return f.read(1) == b"\x80"


def checkpoint_iteration(path: Path) -> int:
    """The number in mmengine's `iter_N.pth` / `epoch_N.pth`, or -1."""
    digits = path.stem.split("_")[-1]
    return int(digits) if digits.isdigit() else -1


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The checkpoint mmengine's `last_checkpoint` marker names, else the highest numbered
    complete one."""
    marker = work_dir / "last_checkpoint"
    if marker.is_file():
        # mmengine writes an absolute path: for a run copied elsewhere, the file of that name
        # here, not the original's.
        latest = work_dir / Path(marker.read_text(errors="replace").strip()).name
        if latest.is_file() and looks_complete(latest):
            return latest
    found = sorted(work_dir.glob("iter_*.pth"), key=checkpoint_iteration) or sorted(
        work_dir.glob("epoch_*.pth"), key=checkpoint_iteration
    )
    complete = [p for p in found if looks_complete(p)]  # skip an interrupted save
    return complete[-1] if complete else None
