"""One process of a distributed int8 `detcompress compress` run, started by torchrun from
test_distributed.py: makes the library call that `detcompress compress ... --launcher pytorch`
makes, then gathers a digest of every rank's final state (weights, quantizer parameters, BN
statistics) to rank 0, which writes them as JSON for the test to compare, with the run's result
and (OUT.pt) its model's outputs on a fixed input; then resumes RESUME_CKPT (written by one
process) to ITERS iterations through `detcompress resume ... --launcher pytorch`.

    torchrun --nproc_per_node 2 tests/dist_worker.py OUT.json CONFIG WORK_DIR ITERS \
        RESUME_CKPT RESUME_WORK_DIR [cfg-options]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from mmengine.dist import all_gather_object, get_rank


def digest(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {
        name: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        for name, t in state.items()
    }


def main() -> None:
    out, config, work_dir, iters, resume_from, resume_dir, *options = sys.argv[1:]
    from detcompress import api
    from detcompress.cli import app

    # What `detcompress compress CONFIG --preset int8 ... --launcher pytorch` calls.
    plan = api.plan_compress(
        Path(config), preset="int8", cfg_options=options, work_dir=Path(work_dir),
        max_iters=int(iters),
    )  # fmt: skip
    result = api.compress(plan, launcher="pytorch")
    from detcompress.compression.nncf_adapter import quantizer_modules

    model = result.model
    quantizer_params = sorted(
        f"{hook}.{p}" for hook, q in quantizer_modules(model) for p, _ in q.named_parameters()
    )
    mine = {
        "rank": get_rank(),
        "world_size": result.world_size,
        "state": digest(model.state_dict()),
        "quantizer_parameters": quantizer_params,
        "trainable_quantizer_parameters": sum(
            p.requires_grad for _, q in quantizer_modules(model) for p in q.parameters()
        ),
    }
    gathered = all_gather_object(mine)
    if get_rank() == 0:
        # Rank 0's outputs on a fixed input, for the single-process reload to match.
        model.eval()
        with torch.no_grad():
            outputs = model(torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
        report = {"ranks": gathered, "checkpoint": str(result.checkpoint), **result.to_json()}
        Path(out).write_text(json.dumps(report))
        torch.save([t for level in outputs for t in level], Path(out).with_suffix(".pt"))

    # Then, in the same processes (one start-up less), the command line resumes a checkpoint
    # that one process wrote.
    app(
        ["resume", resume_from, "--max-iters", str(int(iters)), "--work-dir", resume_dir,
         "--launcher", "pytorch", "--json", str(Path(out).with_suffix(".resume.json"))],
        standalone_mode=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()
