"""Distributed data-parallel runs through mmengine: `torchrun` (`--launcher pytorch`) or slurm.

detcompress compresses the detector *before* mmengine's Runner exists (the Runner builds the
optimizer from the model it is given), so the process group is set up here, early, with
mmengine's own `init_dist`; the Runner then finds it initialized and does not set it up again
(`Runner.setup_env` skips `init_dist` when
`torch.distributed.is_initialized()`), wraps the model in `MMDistributedDataParallel`, shards
the training data per rank with its samplers and writes checkpoints from rank 0 only.

How every rank ends with the same compressed model: every rank calibrates on the same batches
(the calibration loader reads the whole dataset, with rank 0's augmentation seeds, on every
rank: see `training.calibration_batches`). That runs the same NNCF code on the same data
everywhere, so every rank gets the same compression structure (the same quantizers in the same
order, which DDP requires) without shipping it around, and the result does not depend on the
number of processes. Then every parameter and buffer is broadcast from rank 0
(`broadcast_state`): a GPU's kernels are not bit-deterministic, and the broadcast makes rank
0's values the values, exactly (and loaded weights too). Calibrating on rank 0 alone would
leave the other ranks idle just the same, and they would still need the structure.

During training DDP keeps the parameters (quantizer scales included: they are ordinary
parameters) identical; batch-norm running statistics are updated from each rank's own
batches, so `training.SyncNormStatsHook` averages them after every iteration (running
statistics are exponential moving averages, linear in the batch statistics, so the average is
what one process would have computed from the per-rank batch means).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

from detcompress.errors import DetcompressError, closest

LAUNCHERS = ("none", "pytorch", "slurm")
# What torchrun sets for every process it starts, and what srun sets for every task.
_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_SLURM_ENV = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run (launcher 'none': one process, rank 0 of 1)."""

    launcher: str = "none"
    rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launcher != "none"

    def describe(self, batch_size: int, auto_scale_lr: Any) -> str:
        """The log line about the world size and what it means for the batch and LR."""
        if not self.distributed:
            return f"one process, batch size {batch_size}"
        total = batch_size * self.world_size
        scale = auto_scale_lr or {}
        if scale.get("enable"):
            lr = (
                f"auto_scale_lr: mmengine scales the learning rate by {total}/"
                f"{scale.get('base_batch_size')}"
            )
        else:
            lr = "learning rate as the config says (auto_scale_lr is off)"
        return (
            f"distributed: world size {self.world_size} (launcher {self.launcher}, backend "
            f"{self.backend}), batch size {batch_size} per process, {total} in total; {lr}"
        )


def check_launcher(launcher: str, command: str) -> None:
    """Refuse a launcher name we do not know, or one whose environment is missing (not
    started by torchrun / srun), with a line saying how to launch."""
    if launcher not in LAUNCHERS:
        raise DetcompressError(
            f"--launcher is '{launcher}'{closest(launcher, LAUNCHERS)}; valid: "
            f"{', '.join(LAUNCHERS)}"
        )
    world_size = os.environ.get("WORLD_SIZE", "1")
    if launcher == "none" and world_size.isdigit() and int(world_size) > 1:
        raise DetcompressError(
            f"this process is one of {world_size} (WORLD_SIZE is set, as torchrun does) but "
            "--launcher is none: every process would train alone into the same work dir; pass "
            "--launcher pytorch"
        )
    if launcher == "pytorch":
        missing = [key for key in _TORCHRUN_ENV if key not in os.environ]
        if missing:
            raise DetcompressError(
                f"--launcher pytorch: {', '.join(missing)} not set, so this process was not "
                f"started by torchrun; launch N processes with `torchrun --nproc_per_node N -m "
                f"detcompress {command} ... --launcher pytorch` (several machines: add "
                "--nnodes M --node_rank R --master_addr HOST --master_port PORT), or leave "
                "--launcher out for one process"
            )
    if launcher == "slurm":
        missing = [key for key in _SLURM_ENV if key not in os.environ]
        if missing:
            raise DetcompressError(
                f"--launcher slurm: {', '.join(missing)} not set, so this process was not "
                f"started by slurm; launch with `srun --ntasks N detcompress {command} ... "
                "--launcher slurm`, or use --launcher pytorch under torchrun"
            )


def init(launcher: str, device: str, cfg: Any) -> DistInfo:
    """Set up the process group with mmengine's `init_dist` (nothing for launcher 'none').

    The backend is the config's `env_cfg.dist_cfg.backend` (mmdet's default: nccl) on CUDA.
    Without CUDA it is always gloo: NCCL only moves CUDA tensors, and mmdet's configs say
    nccl because they assume GPUs; gloo is torch's CPU backend."""
    if launcher == "none":
        return DistInfo()
    import torch.multiprocessing as mp
    from mmengine.dist import get_dist_info, init_dist, is_distributed

    from detcompress.patches import cuda_set_device_without_cuda

    env_cfg = cfg.get("env_cfg") or {}
    dist_cfg = dict(env_cfg.get("dist_cfg") or {})
    configured = dist_cfg.pop("backend", "nccl")
    backend = configured if device == "cuda" else "gloo"
    if not is_distributed():
        # init_dist picks 'spawn' when no start method is set; the Runner then forces the
        # config's (mmdet: 'fork'). Use the config's from the start, so that the calibration
        # loader's workers start like the Runner's.
        if mp.get_start_method(allow_none=True) is None:
            mp_cfg = env_cfg.get("mp_cfg") or {}
            mp.set_start_method(mp_cfg.get("mp_start_method", "fork"))
        with cuda_set_device_without_cuda():
            init_dist(launcher, backend=backend, **dist_cfg)
        atexit.register(_shutdown)
    rank, world_size = get_dist_info()
    return DistInfo(launcher, rank, world_size, backend)


def _shutdown() -> None:
    import torch.distributed as torch_dist

    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def configure_runner(cfg: Any, info: DistInfo, device: str) -> None:
    """The Runner's launcher and DDP wrapper for this run (not stored in checkpoints' configs:
    the next run may be a single process, or on GPUs)."""
    cfg.launcher = info.launcher
    if not info.distributed:
        return
    env_cfg = dict(cfg.get("env_cfg") or {})
    env_cfg["dist_cfg"] = dict(env_cfg.get("dist_cfg") or {}, backend=info.backend)
    cfg.env_cfg = env_cfg
    if device != "cuda":
        # mmengine's default wrapper passes device_ids=[LOCAL_RANK], which DDP accepts only
        # for a module on a GPU; on CPU it must be None. Other keys as mmengine's default.
        wrapper = dict(cfg.get("model_wrapper_cfg") or {})
        wrapper.setdefault("type", "MMDistributedDataParallel")
        wrapper.setdefault("broadcast_buffers", False)
        wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
        wrapper["device_ids"] = None
        cfg.model_wrapper_cfg = wrapper
        if cfg.get("sync_bn"):  # torch's and mmcv's SyncBN run on CUDA only
            cfg.sync_bn = None


def revert_sync_batchnorm_on_cpu(model: Any, info: DistInfo, device: str) -> Any:
    """mmdet detectors may build SyncBN themselves when the world size is above 1 (RTMDet's
    `use_syncbn`), which fails on CPU: back to plain BN there (statistics are averaged by
    `training.SyncNormStatsHook` instead)."""
    if not info.distributed or device == "cuda":
        return model
    from mmengine.model import revert_sync_batchnorm

    return revert_sync_batchnorm(model)


def run_on_main(info: DistInfo, action: Any) -> None:
    """Run `action()` on rank 0 only (work-dir housekeeping); a DetcompressError it raises is
    raised on every rank, so that no rank waits for the others in vain."""
    if not info.distributed:
        action()
        return
    from mmengine.dist import barrier, broadcast_object_list

    outcome: list[str | None] = [None]
    if info.is_main:
        try:
            action()
        except DetcompressError as exc:
            outcome[0] = str(exc)
    broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise DetcompressError(outcome[0])
    barrier()


def broadcast_state(model: Any, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers (weights, quantizer scales, BN statistics) into
    every rank's model, by name; refuse models whose structures differ."""
    if not info.distributed:
        return
    import torch
    from mmengine.dist import all_gather_object, broadcast

    state = model.state_dict(keep_vars=True)
    manifest = [(name, tuple(t.shape), str(t.dtype)) for name, t in state.items()]
    manifests = all_gather_object(manifest)
    for rank, other in enumerate(manifests):
        if sorted(other) != sorted(manifests[0]):
            extra = sorted(set(other) ^ set(manifests[0]))[:3]
            raise RuntimeError(
                f"rank {rank}'s compressed model differs from rank 0's (e.g. {extra}); the "
                "compression initialization is not deterministic across ranks"
            )
    seen: set[int] = set()
    with torch.no_grad():
        for name, _, _ in manifests[0]:  # rank 0's order on every rank
            tensor = state[name]
            if id(tensor) in seen:  # a quantizer shared by several operations
                continue
            seen.add(id(tensor))
            broadcast(tensor.data, src=0)
