"""allocator.keep_freed_memory_for_reuse: buffers freed and allocated again, as in every
training iteration, no longer page-fault back in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Each iteration, a new worker thread (a glibc arena of its own, as torch's worker threads have)
# allocates and touches four 7 MB buffers, then frees them; page faults per iteration.
ITERATIONS = """
import json, resource, sys, threading, torch
from detcompress.train import allocator
applied = allocator.keep_freed_memory_for_reuse() if sys.argv[1] == "keep" else None

def work():
    buffers = [torch.ones(7 * 2**20 // 4) for _ in range(4)]
    del buffers

faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults[3:]}))
"""


def _faults(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("DETCOMPRESS_MALLOC", None)
    # Training runs torch's thread pool; with one thread (as under pytest-xdist, which gives
    # each worker its share of the cores) glibc's default mmap threshold adapts and the
    # defaults' faults become erratic (measured 27 to 64,325), so the scenario is fixed here.
    env["OMP_NUM_THREADS"] = "2"
    out = subprocess.run(
        [sys.executable, "-c", ITERATIONS, mode], capture_output=True, text=True, check=True,
        env=env,
    )  # fmt: skip
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_memory_is_reused_without_page_faults() -> None:
    default, kept = _faults("default"), _faults("keep")
    assert kept["applied"] is True
    pages_touched = 4 * 7 * 2**20 // 4096 * len(default["faults"])
    # glibc's defaults give the memory back and fault it in again at nearly every iteration.
    assert sum(default["faults"]) > pages_touched // 4
    # Kept: a fraction (glibc now and then hands a new thread another arena, whose memory is
    # new; measured 12-32% of the defaults' faults; torch's worker threads live on).
    assert sum(kept["faults"]) < sum(default["faults"]) // 2


def test_opting_out_keeps_glibcs_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from detcompress.train import allocator

    monkeypatch.setenv(allocator.OPT_OUT, "system")
    assert allocator.keep_freed_memory_for_reuse() is False
