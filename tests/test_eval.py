"""eval: one test loop and one metric for checkpoints, OpenVINO IR and ONNX models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import DETECTING_SPEC_KW, FP32_MAP_TOLERANCE, INT8_MAP_TOLERANCE
from detcompress.cli import app

VAL_IMAGES = DETECTING_SPEC_KW["val_images"]

runner = CliRunner()


def _invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _eval(target: Path, *extra: Any) -> dict[str, Any]:
    report = target.parent / f"eval_{target.name}.json"
    result = _invoke("eval", target, "--json", report, *extra)
    assert result.exit_code == 0, result.output[-3000:]
    data: dict[str, Any] = json.loads(report.read_text())
    return data


@pytest.fixture(scope="module")
def models(detecting_models: dict[str, Any]) -> dict[str, Any]:
    """A model that detects (mAP ~0.1 on 24 images) and its int8 PTQ, their last validations,
    and their exports with and without postprocessing (conftest's `detecting_models`): parity
    on near-zero scores of an untrained model would say little."""
    return detecting_models


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_checkpoint_eval_reproduces_its_last_validation(models: dict, name: str) -> None:
    run = models["runs"][name]
    data = _eval(Path(run["checkpoint"]))
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75"):
        assert data[key] == pytest.approx(run[key], abs=1e-6)
    assert data["backend"] == "pytorch" and data["num_images"] == VAL_IMAGES
    assert data["precision"] == ("fp32" if name == "fp32" else "int8 (fake-quantized)")


@pytest.mark.slow
@pytest.mark.parametrize("post", ["--postprocessing", "--no-postprocessing"])
@pytest.mark.parametrize("fmt", ["model.xml", "model.onnx"])
def test_exported_fp32_matches_pytorch(models: dict, fmt: str, post: str) -> None:
    """FP32: the same metric within 0.1 point (x100) of PyTorch's, through either runtime, with
    the graph's own NMS or with mmdet's postprocessing on raw outputs."""
    pytorch = models["runs"]["fp32"]
    data = _eval(models["exports"][("fp32", post)] / fmt, "--precision", "f32")
    assert data["bbox_mAP"] == pytest.approx(pytorch["bbox_mAP"], abs=FP32_MAP_TOLERANCE)
    assert data["bbox_mAP_50"] == pytest.approx(pytorch["bbox_mAP_50"], abs=FP32_MAP_TOLERANCE)
    assert data["num_images"] == VAL_IMAGES and data["precision"] in ("f32", "fp32")
    assert data["backend"] == ("openvino" if fmt == "model.xml" else "onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("post", ["--postprocessing", "--no-postprocessing"])
@pytest.mark.parametrize("fmt", ["model.xml", "model.onnx"])
def test_exported_int8_matches_pytorch(models: dict, fmt: str, post: str) -> None:
    """int8: within 0.5 point of the fake-quantized PyTorch model (rounding at the runtime's
    int8 kernels differs from torch's fake quantizers near rounding boundaries)."""
    pytorch = models["runs"]["int8"]
    data = _eval(models["exports"][("int8", post)] / fmt)
    assert data["bbox_mAP"] == pytest.approx(pytorch["bbox_mAP"], abs=INT8_MAP_TOLERANCE)
    assert data["precision"] == "int8"


@pytest.mark.slow
def test_show_dir_writes_drawn_images(models: dict, tmp_path: Path) -> None:
    _eval(models["exports"][("fp32", "--postprocessing")] / "model.xml", "--show-dir", tmp_path)
    assert len(list(tmp_path.rglob("*.png")) + list(tmp_path.rglob("*.jpg"))) == VAL_IMAGES


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unknown_file_type_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(b"x")
    result = _invoke("eval", model)
    assert result.exit_code == 2
    assert "unknown model file type '.tflite'; valid: .pth" in result.output


def test_ir_without_its_bin_is_refused(tmp_path: Path) -> None:
    xml = tmp_path / "model.xml"
    xml.write_text("<net/>")
    result = _invoke("eval", xml)
    assert result.exit_code == 2 and "model.bin is missing" in result.output


@pytest.mark.slow
def test_model_whose_classes_differ_from_the_dataset_is_refused(
    models: dict, tmp_path: Path
) -> None:
    other = tmp_path / "other.py"
    text = models["config"].read_text()
    other.write_text(text.replace("'circle', 'square', 'triangle'", "'cat', 'dog', 'bird'"))
    assert other.read_text() != text
    onnx = models["exports"][("fp32", "--postprocessing")] / "model.onnx"
    result = _invoke("eval", onnx, "--config", other)
    assert result.exit_code == 2
    assert "classes (circle, square, triangle; 3 in all) differ" in result.output
    assert "(cat, dog, bird; 3 in all)" in result.output


@pytest.mark.slow
def test_dataset_path_that_does_not_exist_is_refused(models: dict, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(models["exports"][("fp32", "--postprocessing")], copy)
    result = _invoke(
        "eval", copy / "model.onnx", "--cfg-options",
        f"test_dataloader.dataset.data_root={tmp_path / 'nowhere'}",
    )  # fmt: skip
    assert result.exit_code == 2
    assert (
        "test_dataloader.dataset.data_root" in result.output and "does not exist" in result.output
    )
