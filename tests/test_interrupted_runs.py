"""Nothing the user has is lost: interrupted runs, refreshed workspaces, output paths checked
before the work, resumes that write where the checkpoint is."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import file_digests
from detcompress.cli import app
from detcompress.model.checkpoint import load_checkpoint

runner = CliRunner()


def _invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _compress_command(config: Path, work_dir: Path, iters: int) -> list[str]:
    return [
        sys.executable, "-m", "detcompress", "compress", str(config), "--max-iters", str(iters),
        "--work-dir", str(work_dir), "--cfg-options", "default_hooks.checkpoint.interval=2",
        "default_hooks.checkpoint.max_keep_ckpts=10",
    ]  # fmt: skip


def _losses(work_dir: Path) -> dict[int, float]:
    """Training loss per iteration from mmengine's scalar logs (all runs in the work dir)."""
    losses = {}
    for scalars in work_dir.glob("*/vis_data/scalars.json"):
        for line in scalars.read_text().splitlines():
            entry = json.loads(line)
            if "loss" in entry:
                losses[entry["iter"]] = entry["loss"]
    return losses


def _final_names_all_load(work_dir: Path) -> list[Path]:
    found = sorted(work_dir.glob("*.pth"))
    for path in found:
        load_checkpoint(path)  # raises CheckpointError for a truncated file
    return found


@pytest.fixture(scope="module")
def uninterrupted(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    config = tiny_workspace / "configs" / "demo.py"
    subprocess.run(_compress_command(config, work_dir, 6), check=True, capture_output=True)
    return work_dir


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_only_loadable_checkpoints_and_resume_continues_exactly(
    tiny_workspace: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    work_dir = tmp_path / "run"
    config = tiny_workspace / "configs" / "demo.py"
    process = subprocess.Popen(
        _compress_command(config, work_dir, 6),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    # Killed while the second checkpoint is being saved: as soon as any file of it appears
    # (the final name, or a temporary one), whichever way the save writes it.
    while not any(work_dir.glob("*iter_4*")):  # pathlib matches hidden names too
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = _final_names_all_load(work_dir)
    assert work_dir / "iter_2.pth" in saved and work_dir / "iter_6.pth" not in saved

    # In a process of its own, as a user runs it (mmengine keeps per-process state, such as its
    # visualizer, that would mix the scalar logs of several runs in one process).
    resumed = subprocess.run(
        [sys.executable, "-m", "detcompress", "resume", str(work_dir)],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(work_dir.glob(".*.tmp")), "temporary files of the killed save remain"
    a = torch.load(uninterrupted / "iter_6.pth", weights_only=True)["state_dict"]
    b = torch.load(work_dir / "iter_6.pth", weights_only=True)["state_dict"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-6), key
    expected, got = _losses(uninterrupted), _losses(work_dir)
    assert set(range(1, 7)) <= set(got)
    for iteration in range(3, 7):
        assert got[iteration] == pytest.approx(expected[iteration], rel=1e-4), iteration


@pytest.mark.slow
def test_a_save_that_fails_midway_leaves_no_truncated_checkpoint(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """A file size limit makes the checkpoint write fail halfway, as a full disk does."""
    work_dir = tmp_path / "run"
    config = tiny_workspace / "configs" / "demo.py"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    result = subprocess.run(
        _compress_command(config, work_dir, 2),
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "File too large" in result.stderr
    assert _final_names_all_load(work_dir) == []  # no truncated iter_2.pth
    assert not list(work_dir.glob(".*.tmp"))


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    from detcompress.files import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".iter_4.pth.{dead.stdout.strip()}.abcd.tmp"
    stale.write_bytes(b"PK")
    stale_dir = tmp_path / f".export.{dead.stdout.strip()}.x1.tmp"
    stale_dir.mkdir()
    alive = tmp_path / f".iter_6.pth.{os.getppid()}.abcd.tmp"  # a running process's
    alive.write_bytes(b"PK")
    mine = tmp_path / ".notes.tmp"  # not ours: not in our naming scheme
    mine.write_text("keep")
    remove_stale_temporaries(tmp_path)
    assert not stale.exists() and not stale_dir.exists()
    assert alive.exists() and mine.exists()


def test_init_demo_force_keeps_what_it_did_not_write(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert _invoke("init", "demo", ws).exit_code == 0
    (ws / "work_dirs" / "fp32").mkdir(parents=True)
    (ws / "work_dirs" / "fp32" / "iter_2.pth").write_bytes(b"the user's run")
    (ws / "notes.md").write_text("mine")
    (ws / "configs" / "demo.py").write_text("# my edits\n")
    original_data = file_digests(ws / "data")
    result = _invoke("init", "demo", ws, "--force", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert (ws / "work_dirs" / "fp32" / "iter_2.pth").read_bytes() == b"the user's run"
    assert (ws / "notes.md").read_text() == "mine"
    # the edited config is moved aside (and said so), the new one written
    moved = list(ws.glob("previous_init_*/configs/demo.py"))
    assert len(moved) == 1 and moved[0].read_text() == "# my edits\n"
    assert "moved to" in result.output
    assert "_base_" in (ws / "configs" / "demo.py").read_text()
    assert file_digests(ws / "data") != original_data  # refreshed with the new seed
    assert not list(ws.glob("previous_init_*/data"))  # unchanged own files are not kept twice
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["eval", "{ckpt}", "--json", "{file}/x.json"], "--json {file}/x.json: {file} is a file"),
        (["eval", "{ckpt}", "--json", "{dir}"], "--json {dir}: is a folder"),
        (["eval", "{ckpt}", "--show-dir", "{file}"], "--show-dir {file}: is a file"),
        (["bench", "{ckpt}", "--json", "{dir}"], "--json {dir}: is a folder"),
        (["bench", "{ckpt}", "--plot", "{dir}/{file_name}/p.png"], "--plot"),
        (["export", "{ckpt}", "--out", "{file}", "--force"], "--out {file}: is a file"),
        (["export", "{ckpt}", "--json", "{dir}"], "--json {dir}: is a folder"),
        (["compress", "{config}", "--work-dir", "{file}"], "--work-dir {file}: is a file"),
        (["compress", "{config}", "--json", "{dir}"], "--json {dir}: is a folder"),
        (["resume", "{ckpt}", "--work-dir", "{file}"], "--work-dir {file}: is a file"),
        (["resume", "{ckpt}", "--json", "{dir}"], "--json {dir}: is a folder"),
        (["init", "demo", "{file}"], "{file}: is a file"),
        (["init", "preset", "int8", "-o", "{dir}"], "--output {dir}: is a folder"),
    ],
)
def test_unwritable_output_is_refused_before_any_work(
    args: list[str], named: str, tiny_fp32: dict, tiny_workspace: Path, tmp_path: Path
) -> None:
    user_file = tmp_path / "results.txt"
    user_file.write_text("the user's file")
    folder = tmp_path / "folder"
    folder.mkdir()
    values = {
        "ckpt": tiny_fp32["checkpoint"],
        "config": tiny_workspace / "configs" / "demo.py",
        "file": user_file,
        "file_name": user_file.name,
        "dir": folder,
    }
    before = file_digests(tmp_path)
    started = time.monotonic()
    result = _invoke(*[a.format(**values) for a in args])
    assert result.exit_code == 2, result.output[-2000:]
    assert "Traceback" not in result.output
    assert named.format(**values) in result.output
    assert file_digests(tmp_path) == before
    assert time.monotonic() - started < 60  # refused up front, not after the work


@pytest.mark.slow
def test_resume_writes_where_the_checkpoint_is_and_leaves_no_stray_files(
    tiny_workspace: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "copied_run"
    shutil.copytree(uninterrupted, copy)
    for later in ("iter_4.pth", "iter_6.pth"):
        (copy / later).unlink()
    original = file_digests(uninterrupted)
    result = _invoke("resume", copy / "iter_2.pth", "--max-iters", "4")
    assert result.exit_code == 0, result.output[-3000:]
    assert (copy / "iter_4.pth").is_file()
    assert file_digests(uninterrupted) == original  # the run it was copied from is untouched
    assert not list(copy.glob("tmp*.py")) and not list(copy.glob(".*.tmp"))


@pytest.mark.slow
def test_corrupt_later_checkpoint_is_named_and_kept_apart(
    uninterrupted: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(uninterrupted, copy)
    (copy / "iter_6.pth").write_bytes((copy / "iter_6.pth").read_bytes()[:1000])  # old-style cut
    (copy / "last_checkpoint").write_text(str(copy / "iter_4.pth"))
    refused = _invoke("resume", copy)
    assert refused.exit_code == 2
    assert "iter_6.pth is truncated or corrupt" in refused.output
    forced = _invoke("resume", copy, "--force")
    assert forced.exit_code == 0, forced.output[-3000:]
    assert list(copy.glob("corrupt_*/iter_6.pth")) and not list(copy.glob("previous_run_*"))
    assert torch.load(copy / "iter_6.pth", weights_only=True)["meta"]["iter"] == 6
