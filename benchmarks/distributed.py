"""int8 QAT of the demo in 1 process vs 2 processes (torchrun, DDP) for the same samples seen.

    .venv/bin/python benchmarks/distributed.py --workspace demo_ws \\
        --load-from demo_ws/work_dirs/fp32/iter_900.pth [--iters 100] [--lr 1e-4] \\
        [--seeds 0 1 2 3] [--json FILE]

Both runs start from the same FP32 checkpoint, calibrate on the same batches (calibration does
not depend on the number of processes) and train for the same number of iterations with the
same total batch: one process with the config's batch size B, two processes with B/2 each (2 x
B/2 samples per iteration), so the learning-rate schedule is the same. Each run goes through
the command line (`python -m detcompress compress ...`, the 2-process one under
`python -m torch.distributed.run`), and its final validation is the run's own. Prints the
training time, the wall time of the whole command and the final bbox mAP of both, and whether
the mAPs are within 1 point (the goal). With several `--seeds`, one pair of runs per seed
(`randomness.seed`), then the mean and standard deviation of each side: one pair differs by as
much as one side differs from itself between seeds, so the goal is judged on the means.

On a CPU, every process gets the same number of threads (--threads, default: half the cores),
as each would get one GPU: 2 processes use twice the compute of 1, and the time ratio shows
what data parallelism gains. (Letting the single process use all cores instead measured as
unreliable on a shared machine: with other jobs running, 2 spinning OpenMP threads made a QAT
iteration 13 s instead of 1 s.)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run `cmd`, its output into `log`; returns the wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, required=True, help="demo workspace")
    parser.add_argument("--load-from", type=Path, required=True, help="FP32 checkpoint")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--preset", default="int8")
    parser.add_argument("--out", type=Path, help="keep work dirs and logs here (default: temp)")
    parser.add_argument("--threads", type=int, help="threads per process (default: cores / 2)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="randomness.seed of each pair (default: config's)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()

    from mmengine.config import Config

    config = args.workspace / "configs" / "demo.py"
    batch = int(Config.fromfile(str(config)).train_dataloader.batch_size)
    if batch % 2:
        sys.exit(f"{config}: batch size {batch} does not split over 2 processes")
    cores = os.cpu_count() or 2
    threads = args.threads or max(1, cores // 2)
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for seed in args.seeds or [None]:
            pair_dir = out / (f"seed{seed}" if seed is not None else "config_seed")
            pair_dir.mkdir(parents=True, exist_ok=True)
            pairs.append({"seed": seed, **run_pair(args, config, batch, threads, seed, pair_dir)})

    print()
    print(f"int8 QAT ({args.preset}), {args.iters} iterations from {args.load_from}, "
          f"AdamW lr {args.lr}, {cores} CPU cores, {threads} thread(s) per process")  # fmt: skip
    print(f"{'seed':>6}  {'processes':>9}  {'batch/proc':>10}  {'samples':>7}  {'train s':>8}  "
          f"{'wall s':>7}  {'bbox mAP':>8}")  # fmt: skip
    for pair in pairs:
        for procs in (1, 2):
            r = pair[procs]
            samples = r["per_process"] * procs * r["iterations"]
            seed = pair["seed"] if pair["seed"] is not None else "config"
            print(
                f"{seed:>6}  {procs:>9}  {r['per_process']:>10}  {samples:>7}  "
                f"{r['train_seconds']:>8.1f}  {r['wall_s']:>7.1f}  {r['bbox_mAP']:>8.3f}"
            )
    summary = summarize(pairs)
    for procs in (1, 2):
        side = summary[f"{procs}_process"]
        print(f"{procs} process(es): mean bbox mAP {side['mean_map']:.3f} "
              f"(std {side['std_map']:.3f} over {len(pairs)} seed(s)), "
              f"mean training time {side['mean_train_s']:.1f} s")  # fmt: skip
    gap = summary["mean_gap_points"]
    print(f"gap of the means: {gap:+.1f} points (2 - 1; goal: within 1) -> "
          f"{'ok' if abs(gap) <= 1.0 else 'MISSED'}; per pair: "
          + ", ".join(f"{g:+.1f}" for g in summary["pair_gaps_points"]))  # fmt: skip
    print(f"train time 2 processes / 1 process: {summary['train_time_ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"pairs": pairs, "summary": summary}, indent=2))


def run_pair(
    args: argparse.Namespace, config: Path, batch: int, threads: int, seed: int | None, out: Path
) -> dict[int, dict]:
    """One run in 1 process (batch B) and one in 2 processes (B/2 each), same seed."""
    common = [
        "compress", str(config), "--preset", args.preset, "--load-from", str(args.load_from),
        "--max-iters", str(args.iters), "--device", "cpu", "--force",
    ]  # fmt: skip
    options = [f"optim_wrapper.optimizer.lr={args.lr}"]
    if seed is not None:
        options.append(f"randomness.seed={seed}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    runs = {
        1: (
            [sys.executable, "-m", "detcompress", *common, "--work-dir", str(out / "one"),
             "--json", str(out / "one.json"), "--cfg-options", *options],
            batch,
        ),
        2: (
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
             "-m", "detcompress", *common, "--work-dir", str(out / "two"),
             "--json", str(out / "two.json"), "--launcher", "pytorch",
             "--cfg-options", *options, f"train_dataloader.batch_size={batch // 2}"],
            batch // 2,
        ),
    }  # fmt: skip
    results = {}
    for procs, (cmd, per_process) in runs.items():
        name = "one" if procs == 1 else "two"
        print(f"seed {seed}: running {procs} process(es), batch {per_process} each ...", flush=True)
        wall = run(cmd, env, out / f"{name}.log")
        data = json.loads((out / f"{name}.json").read_text())
        results[procs] = {
            "bbox_mAP": data["bbox_mAP"], "train_seconds": data["train_seconds"],
            "iterations": data["iterations"], "wall_s": wall, "per_process": per_process,
        }  # fmt: skip
    return results


def summarize(pairs: list[dict]) -> dict:
    summary: dict = {}
    for procs in (1, 2):
        maps = [p[procs]["bbox_mAP"] for p in pairs]
        summary[f"{procs}_process"] = {
            "mean_map": statistics.mean(maps),
            "std_map": statistics.stdev(maps) if len(maps) > 1 else 0.0,
            "mean_train_s": statistics.mean(p[procs]["train_seconds"] for p in pairs),
        }
    summary["pair_gaps_points"] = [(p[2]["bbox_mAP"] - p[1]["bbox_mAP"]) * 100 for p in pairs]
    summary["mean_gap_points"] = (
        summary["2_process"]["mean_map"] - summary["1_process"]["mean_map"]
    ) * 100
    summary["train_time_ratio"] = (
        summary["2_process"]["mean_train_s"] / summary["1_process"]["mean_train_s"]
    )
    return summary


if __name__ == "__main__":
    main()
