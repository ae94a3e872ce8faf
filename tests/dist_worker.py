"""One process of a distributed int8 `detcompress compress` run, started by torchrun from
test_distributed.py: makes the library call that `detcompress compress ... --launcher pytorch`
makes, then gathers a digest of every rank's final state (weights, quantizer parameters, BN
statistics) to rank 0, which writes them as JSON for the test to compare.

    torchrun --nproc_per_node 2 tests/dist_worker.py OUT.json CONFIG WORK_DIR ITERS [cfg-options]
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
    out, config, work_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    from detcompress import api

    # What `detcompress compress CONFIG --preset int8 ... --launcher pytorch` calls.
    plan = api.plan_compress(
        config, preset="int8", cfg_options=sys.argv[5:], work_dir=work_dir,
        max_iters=int(sys.argv[4]),
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
        out.write_text(json.dumps({"ranks": gathered, "checkpoint": str(result.checkpoint)}))


if __name__ == "__main__":
    main()
