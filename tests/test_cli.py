"""The command line: command list, version, fast help, errors as one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detcompress import __version__
from detcompress.cli import app

runner = CliRunner()
COMMANDS = ("init", "compress", "resume", "eval", "export", "bench")


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f" {name} " in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"detcompress {__version__}"


def test_cli_imports_nothing_heavy() -> None:
    code = (
        "import sys, detcompress.cli\n"
        "heavy = ('torch', 'mmdet', 'mmengine', 'mmcv', 'nncf', 'openvino', 'onnx', 'numpy')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "command", [["eval", "x.pth"], ["export", "x.pth"], ["bench", "x.pth"], ["bench", "x.xml"]]
)
def test_missing_checkpoint_is_one_line(command: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, [*command[:1], str(tmp_path / command[1])])
    assert result.exit_code == 2
    assert f"{command[1]}: no such" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_init_preset_writes_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "mine.yaml"
    first = runner.invoke(app, ["init", "preset", "int8", "-o", str(target)])
    assert first.exit_code == 0, first.output
    assert "algorithm: quantization" in target.read_text()
    target.write_text("edited")
    second = runner.invoke(app, ["init", "preset", "int8", "-o", str(target)])
    assert second.exit_code == 2
    assert "--force" in second.output
    assert target.read_text() == "edited"
    third = runner.invoke(app, ["init", "preset", "int8", "-o", str(target), "--force"])
    assert third.exit_code == 0
    assert "algorithm: quantization" in target.read_text()


def test_init_preset_unknown_name_suggests(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "preset", "int9", "-o", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2
    assert "did you mean 'int8'?" in result.output
    assert not (tmp_path / "x.yaml").exists()


def test_compression_without_nncf_installed_is_one_clear_error(
    inline_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # `import nncf` now raises ImportError
    result = runner.invoke(app, ["compress", str(inline_config), "--max-iters", "1"])
    assert result.exit_code == 2
    assert "nncf is not installed" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_resume_needs_a_detcompress_checkpoint(tmp_path: Path) -> None:
    import torch

    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    result = runner.invoke(app, ["resume", str(foreign)])
    assert result.exit_code == 2
    assert "not written by detcompress" in result.output and "--load-from" in result.output
    missing = runner.invoke(app, ["resume", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such checkpoint file or work dir" in missing.output
    empty = runner.invoke(app, ["resume", str(tmp_path)])
    assert empty.exit_code == 2 and "holds no checkpoint" in empty.output


def test_unknown_device_is_one_clear_error(inline_config: Path) -> None:
    result = runner.invoke(app, ["compress", str(inline_config), "--device", "tpu"])
    assert result.exit_code == 2
    assert "--device is 'tpu'; valid: auto, cpu, cuda" in result.output
