"""Distributed compression: 2 processes under torchrun on CPU (gloo), int8 QAT of the tiny demo,
and checkpoints that move between 2 processes and 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST_INIT
from detcompress.cli import app

runner = CliRunner()
WORKER = Path(__file__).with_name("dist_worker.py")
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    """2 processes on this machine through torch's own launcher (what `torchrun` runs)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"  # 2 processes on 2 cores; torchrun's default, said quietly
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           *[str(a) for a in args]]  # fmt: skip
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return done


@pytest.fixture(scope="module")
def two_processes(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One process: 2 int8 QAT iterations. Then 2 processes (batch 4 each): 4 int8 QAT
    iterations with every rank's final state digested, and the one-process run resumed to
    iteration 4."""
    base = tmp_path_factory.mktemp("dist")
    config = tiny_workspace / "configs" / "demo.py"
    one = runner.invoke(app, [
        "compress", str(config), "--preset", "int8", "--max-iters", "2",
        "--work-dir", str(base / "one"), "--cfg-options", *FAST_INIT,
    ])  # fmt: skip
    assert one.exit_code == 0, one.output[-3000:]
    out = base / "ranks.json"
    done = _torchrun(WORKER, out, config, base / "qat", 4, base / "one" / "iter_2.pth",
                     base / "resumed_in_two", *FAST_INIT, cwd=base)  # fmt: skip
    return {"base": base, "config": config, "report": json.loads(out.read_text()),
            "outputs": torch.load(out.with_suffix(".pt")),
            "resumed": json.loads(out.with_suffix(".resume.json").read_text()),
            "log": done.stdout + done.stderr}  # fmt: skip


@pytest.mark.slow
def test_two_processes_end_with_identical_weights_and_quantizers(two_processes: dict) -> None:
    report = two_processes["report"]
    rank0, rank1 = report["ranks"]
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    assert rank0["world_size"] == rank1["world_size"] == report["world_size"] == 2
    assert report["iterations"] == 4 and report["compressed"] is True
    # Quantizer scales are trainable parameters, in the state of every rank.
    assert rank0["quantizer_parameters"] == rank1["quantizer_parameters"]
    assert len(rank0["quantizer_parameters"]) > 100
    assert rank0["trainable_quantizer_parameters"] > 100
    state0, state1 = rank0["state"], rank1["state"]
    assert set(state0) == set(state1)
    assert any("__nncf_hooks" in k and k.endswith(".scale") for k in state0)
    assert any(k.endswith("bn.running_mean") for k in state0)
    differing = sorted(k for k in state0 if state0[k] != state1[k])
    assert differing == [], f"{len(differing)} tensors differ between ranks: {differing[:5]}"
    assert "world size 2 (launcher pytorch, backend gloo)" in two_processes["log"]
    assert two_processes["log"].count("quantizers: ") == 1  # rank 0 reports, once


@pytest.mark.slow
def test_checkpoint_of_two_processes_loads_in_one_process(two_processes: dict) -> None:
    """Rank 0's state is the checkpoint's; one process rebuilds it with identical outputs, and
    `detcompress eval` reproduces the validation the 2 processes ran together."""
    import hashlib

    from detcompress.model.load import load_detector

    report = two_processes["report"]
    checkpoint = Path(report["checkpoint"])
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in state)
    rank0 = report["ranks"][0]["state"]
    assert set(state) == set(rank0)
    for key, tensor in state.items():
        assert hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest() == rank0[key]

    loaded = load_detector(checkpoint)
    assert loaded.compressed
    with torch.no_grad():
        outputs = loaded.model(torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
    flat = [t for level in outputs for t in level]
    assert len(flat) == len(two_processes["outputs"])
    for mine, theirs in zip(flat, two_processes["outputs"], strict=True):
        assert torch.equal(mine, theirs)

    out = two_processes["base"] / "eval.json"
    result = runner.invoke(app, ["eval", str(checkpoint), "--json", str(out)])
    assert result.exit_code == 0, result.output[-3000:]
    evaluated = json.loads(out.read_text())
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75"):
        assert evaluated[key] == pytest.approx(report[key], abs=1e-9)


@pytest.mark.slow
def test_checkpoints_move_between_two_processes_and_one(two_processes: dict) -> None:
    """A one-process checkpoint resumes in 2 processes (through the command line), and the
    2-process checkpoint resumes in 1 process."""
    resumed = two_processes["resumed"]
    assert (resumed["iterations"], resumed["world_size"], resumed["compressed"]) == (4, 2, True)
    meta = torch.load(resumed["checkpoint"], map_location="cpu", weights_only=True)["meta"]
    assert meta["iter"] == 4 and meta["detcompress"]["compressed"] is True

    base = two_processes["base"]
    one = base / "one.json"
    result = runner.invoke(app, [
        "resume", two_processes["report"]["checkpoint"], "--max-iters", "6",
        "--work-dir", str(base / "resumed_in_one"), "--json", str(one),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    single = json.loads(one.read_text())
    assert (single["iterations"], single["world_size"], single["compressed"]) == (6, 1, True)


def test_python_m_detcompress_runs_the_cli() -> None:
    """torchrun starts `-m detcompress`."""
    done = subprocess.run([sys.executable, "-m", "detcompress", "--version"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("detcompress "), done.stderr


@pytest.mark.parametrize("command", ["compress", "resume"])
def test_launcher_pytorch_outside_torchrun_says_how_to_launch(
    command: str, inline_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    target = inline_config if command == "compress" else tmp_path / "iter_1.pth"
    result = runner.invoke(app, [command, str(target), "--launcher", "pytorch"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: --launcher pytorch: RANK, LOCAL_RANK, WORLD_SIZE")
    how = f"torchrun --nproc_per_node N -m detcompress {command} ... --launcher pytorch"
    assert how in lines[0]


def test_unknown_launcher_and_slurm_outside_slurm_are_one_clear_error(
    inline_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = runner.invoke(app, ["compress", str(inline_config), "--launcher", "pytoch"])
    assert result.exit_code == 2
    assert "--launcher is 'pytoch' (did you mean 'pytorch'?); valid: none, pytorch, slurm" in (
        result.output
    )
    for key in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST"):
        monkeypatch.delenv(key, raising=False)
    slurm = runner.invoke(app, ["compress", str(inline_config), "--launcher", "slurm"])
    assert slurm.exit_code == 2 and "srun --ntasks N detcompress compress" in slurm.output


def test_torchrun_without_launcher_is_refused(
    inline_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["compress", str(inline_config)])
    assert result.exit_code == 2
    assert "this process is one of 2" in result.output and "--launcher pytorch" in result.output
