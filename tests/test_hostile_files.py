"""A model file never runs code without --trust-checkpoint.

Each hostile file carries the config of the tiny demo with one payload that creates a marker
file when executed (a line of Python, or a `type` that mmengine would import and call). Every
command that reads that file must refuse it in one line naming --trust-checkpoint, leave the
marker uncreated and the files around it unchanged. With --trust-checkpoint the payload does
run: the same test would fail if the refusal were missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import file_digests
from detcompress.cli import app

runner = CliRunner()


def _invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _code_payload(marker: Path) -> Callable[[str], str]:
    """A line of Python appended to the stored config."""
    return lambda text: text + f"\n__x = __import__('os').system('touch {marker}')\n"


def _type_payload(marker: Path) -> Callable[[str], str]:
    """Plain data, but the model's `type` names a class that mmengine would import and call."""

    def edit(text: str) -> str:
        assert "    type='YOLOX'" in text
        return text.replace(
            "    type='YOLOX'", f"    type='subprocess.Popen', args=['touch', '{marker}']"
        )

    return edit


def _nms_payload(marker: Path) -> Callable[[str], str]:
    """Plain data, but mmcv's batched_nms passes the nms `type` string to `eval`."""

    def edit(text: str) -> str:
        assert "type='nms'" in text
        return text.replace("type='nms'", f"type=\"__import__('os').system('touch {marker}')\"")

    return edit


PAYLOADS = {"code": _code_payload, "registry_import": _type_payload, "eval_string": _nms_payload}


def _tampered_checkpoint(
    source: Path, target: Path, edit: Callable[[str], str], mmengine: bool
) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    meta = checkpoint["meta"]
    if mmengine:  # a plain mmengine checkpoint: only meta.cfg holds the config
        del meta["detcompress"]
        meta["cfg"] = edit(meta["cfg"])
    else:
        meta["detcompress"]["config_text"] = edit(meta["detcompress"]["config_text"])
    torch.save(checkpoint, target)
    return target


@pytest.fixture(scope="module")
def exported(tiny_fp32_export: Path) -> Path:
    return tiny_fp32_export


def _tampered_ir(exported: Path, folder: Path, edit: Callable[[str], str]) -> Path:
    import openvino as ov

    from detcompress.deploy.openvino_backend import RT_INFO_KEY

    model = ov.Core().read_model(str(exported / "model.xml"))
    metadata = json.loads(model.get_rt_info(RT_INFO_KEY).astype(str))
    metadata["config_text"] = edit(metadata["config_text"])
    model.set_rt_info(json.dumps(metadata), RT_INFO_KEY)
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return folder / "model.xml"


def _tampered_onnx(exported: Path, folder: Path, edit: Callable[[str], str]) -> Path:
    import onnx

    from detcompress.deploy.onnx_backend import METADATA_KEY

    model = onnx.load(str(exported / "model.onnx"))
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            metadata = json.loads(entry.value)
            metadata["config_text"] = edit(metadata["config_text"])
            entry.value = json.dumps(metadata)
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def _commands_for(model: Path, tmp_path: Path) -> dict[str, list[Any]]:
    if model.suffix == ".pth":
        return {
            "eval": ["eval", model],
            "export": ["export", model, "--out", tmp_path / "out", "--verify-images", "1"],
            "resume": ["resume", model, "--work-dir", tmp_path / "resumed"],
            "bench": ["bench", model, "--seconds", "0.1", "--mode", "latency"],
        }
    return {"eval": ["eval", model]}


def _assert_refused_and_nothing_ran(
    command: list[Any], model: Path, marker: Path, tmp_path: Path
) -> None:
    before = file_digests(model.parent)
    result = _invoke(*command)
    assert not marker.exists(), f"the payload ran: {command}"
    assert result.exit_code == 2, result.output[-2000:]
    output = result.output.strip()
    assert "Traceback" not in output
    lines = output.splitlines()  # bench prints its progress lines before the error
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], output
    assert "--trust-checkpoint" in lines[-1] and model.name in lines[-1]
    assert file_digests(model.parent) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "resumed").exists()


@pytest.fixture()
def places(tmp_path: Path) -> tuple[Path, Path]:
    """(the marker file a payload creates if it runs, an empty folder for the hostile file)."""
    folder = tmp_path / "files"
    folder.mkdir()
    return tmp_path / "PAYLOAD_RAN", folder


@pytest.mark.slow
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("kind", ["detcompress", "mmengine"])
def test_hostile_checkpoint_runs_nothing_in_any_command(
    tiny_fp32: dict, places: tuple[Path, Path], tmp_path: Path, payload: str, kind: str
) -> None:
    marker, folder = places
    model = _tampered_checkpoint(
        Path(tiny_fp32["checkpoint"]),
        folder / "x.pth",
        PAYLOADS[payload](marker),
        kind == "mmengine",
    )
    for name, command in _commands_for(model, tmp_path).items():
        if kind == "mmengine" and name == "resume":
            continue  # refused before any config is read: not a detcompress checkpoint
        _assert_refused_and_nothing_ran(command, model, marker, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_hostile_exported_model_runs_nothing(
    exported: Path, places: tuple[Path, Path], tmp_path: Path, payload: str, fmt: str
) -> None:
    marker, folder = places
    tamper = _tampered_ir if fmt == "openvino" else _tampered_onnx
    model = tamper(exported, folder, PAYLOADS[payload](marker))
    _assert_refused_and_nothing_ran(["eval", model], model, marker, tmp_path)
    # bench reads no config from the model at all
    bench = _invoke("bench", model, "--seconds", "0.1", "--mode", "latency")
    assert bench.exit_code == 0, bench.output[-2000:]
    assert not marker.exists()


@pytest.mark.slow
def test_trusted_checkpoint_does_run_its_stored_config(tiny_fp32: dict, tmp_path: Path) -> None:
    """The control: with --trust-checkpoint the stored text is executed as mmengine does."""
    marker = tmp_path / "PAYLOAD_RAN"
    model = _tampered_checkpoint(
        Path(tiny_fp32["checkpoint"]), tmp_path / "x.pth", _code_payload(marker), False
    )
    result = _invoke("eval", model, "--trust-checkpoint")
    assert result.exit_code == 0, result.output[-2000:]
    assert marker.exists()


def test_stored_config_reads_as_data_exactly_as_mmengine_executes_it(tmp_path: Path) -> None:
    """The data reader gives the same Config as executing the text, on stock configs of several
    detector families (one-stage, two-stage, transformer)."""
    from mmengine.config import Config

    from detcompress.config.stored import read_stored_config

    for stock in (
        "rtmdet/rtmdet_tiny_8xb32-300e_coco.py",
        "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
        "detr/detr_r50_8xb2-150e_coco.py",
    ):
        config = tmp_path / "stock.py"
        config.write_text(f"_base_ = 'mmdet::{stock}'\n")
        text = Config.fromfile(str(config)).pretty_text
        executed = Config.fromstring(text, file_format=".py")
        read = read_stored_config(text, "model.pth", trust=False, filename="stock.py")
        assert read.to_dict() == executed.to_dict(), stock
        assert read.pretty_text == executed.pretty_text, stock


def test_inline_nncf_config_is_data_not_registry_types() -> None:
    from detcompress.config.stored import read_stored_config

    text = (
        "model = dict(type='RetinaNet')\n"
        "nncf_config = dict(input_info=dict(sample_size=[1, 3, 64, 64], type='float'),\n"
        "    compression=dict(algorithm='quantization',\n"
        "        initializer=dict(range=dict(type='min_max'))))\n"
    )
    cfg = read_stored_config(text, "model.pth", trust=False, filename="c.py")
    assert cfg.nncf_config.compression.initializer.range.type == "min_max"


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("import os", "not `name = value`"),
        ("x = open('/etc/passwd').read()", "not a literal"),
        ("x = [1, 2][0]", "not a literal"),
        ("x = dict(**y)", "not a literal"),
        ("_base_ = ['other.py']", "_base_"),
        ("custom_imports = dict(imports=['os'])", "custom_imports"),
        ("default_scope = 'evil'", "unknown registry scope"),
        ("model = dict(type='os.system', command='true')", "not a registered type"),
        ("model = dict(type='antigravity')", "not a registered mmdet/mmengine type"),
        ("model = dict(type='RetinaNet', tracker=dict(warp_mode='print(1)'))", "evaluated"),
        ("custom_hooks = [dict(type='RFSearchHook')]", "evaluates its options"),
    ],
)
def test_stored_config_refusals_name_what_and_the_flag(line: str, named: str) -> None:
    from detcompress.config.stored import read_stored_config
    from detcompress.errors import CheckpointError

    with pytest.raises(CheckpointError) as info:
        read_stored_config(f"a = 1\n{line}\n", "model.pth", trust=False, filename="c.py")
    message = str(info.value)
    assert named in message and "--trust-checkpoint" in message and "model.pth" in message
    assert "\n" not in message
