"""Options that several commands share, declared once. Choices are listed in `--help` (the
metavar); they are checked by the library, which every caller goes through, so a wrong value
gets the same one-line error from the CLI and from Python (with the closest valid name)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEVICES = "auto|cpu|cuda"  # any case; gpu = cuda (OpenVINO's GPU)
LAUNCHERS = "none|pytorch|slurm"
PRECISIONS = "auto|f32"

TrustCheckpoint = Annotated[
    bool,
    typer.Option("--trust-checkpoint", help="Allow full unpickling of a checkpoint you trust."),
]
Device = Annotated[
    str, typer.Option(metavar=DEVICES, help="Where to run; auto: a GPU when there is one.")
]
Launcher = Annotated[
    str,
    typer.Option(metavar=LAUNCHERS, help="Data-parallel under torchrun (pytorch) or srun."),
]
Precision = Annotated[
    str,
    typer.Option(metavar=PRECISIONS, help="f32: true fp32 where the runtime would use bf16."),
]
CfgOptions = Annotated[
    list[str] | None,
    typer.Option(metavar="KEY=VALUE ...", help="Config overrides (YAML values)."),
]
JsonOutput = Annotated[
    Path | None, typer.Option("--json", metavar="FILE", help="Also write the numbers as JSON.")
]
