"""export: OpenVINO IR and ONNX of FP32 and int8 checkpoints, checked here with the runtimes
themselves (not only through export's own verification)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detcompress.cli import app

runner = CliRunner()


def _invoke(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoints(
    tiny_workspace: Path, tiny_fp32: dict, tiny_ptq: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """An FP32 checkpoint (2 iterations) and its post-training int8 quantization."""
    base = tmp_path_factory.mktemp("export")
    config = tiny_workspace / "configs" / "demo.py"
    fp32_ckpt = Path(tiny_fp32["checkpoint"])
    return {"base": base, "config": config, "fp32": fp32_ckpt, "int8": tiny_ptq}


def _export(ckpt: Path, out: Path, *extra: str) -> dict[str, Any]:
    report = out.parent / f"{out.name}.json"
    result = _invoke("export", ckpt, "--out", out, "--json", report, *extra)
    assert result.exit_code == 0, result.output[-3000:]
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def _images(config: Path, count: int = 2) -> torch.Tensor:
    """Validation images through the test pipeline, padded as the exported model expects."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(config)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    batch = torch.full((count, 3, 96, 96), 114.0)  # the demo pads with 114 to 96x96
    for i in range(count):
        image = dataset[i]["inputs"]
        batch[i, :, : image.shape[1], : image.shape[2]] = image.float()
    return batch


def _torch_model(ckpt: Path) -> Any:
    from detcompress.model.load import load_detector

    return load_detector(ckpt).model


def _openvino(xml: Path, image: np.ndarray, f32: bool = True) -> tuple[list[np.ndarray], Any]:
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"} if f32 else {}
    )
    result = compiled(image)
    return [np.asarray(result[o]) for o in compiled.outputs], compiled


def _onnxruntime(path: Path, image: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, {"image": image})]


@pytest.mark.slow
def test_fp32_raw_outputs_match_pytorch_in_both_runtimes(checkpoints: dict, tmp_path: Path) -> None:
    data = _export(checkpoints["fp32"], tmp_path / "out", "--to", "all", "--no-postprocessing")
    images = _images(checkpoints["config"], 1)
    model = _torch_model(checkpoints["fp32"])
    with torch.no_grad():  # the demo config has mean 0, std 1 and no channel flip
        expected = [t.numpy() for group in model(images, mode="tensor") for t in group]
    ir, _ = _openvino(tmp_path / "out" / "model.xml", images.numpy())
    onnx = _onnxruntime(tmp_path / "out" / "model.onnx", images.numpy())
    # Same arithmetic in another order: float32 rounding only (1e-4 of the largest output).
    scale = max(float(np.abs(e).max()) for e in expected)
    for got in (ir, onnx):
        assert len(got) == len(expected) == 9  # cls, bbox, objectness x 3 levels
        for e, g in zip(expected, got, strict=True):
            assert np.abs(e - g).max() <= 1e-4 * max(1.0, scale)
    check = data["verification"]["openvino"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-3 * max(1.0, check["max_abs_output"])
    assert check["int8_convolutions"] == 0


@pytest.mark.slow
def test_int8_ir_holds_fake_quantize_and_runs_convolutions_in_int8(
    checkpoints: dict, tmp_path: Path
) -> None:
    import onnx
    import openvino as ov

    data = _export(checkpoints["int8"], tmp_path / "out", "--to", "all", "--no-postprocessing")
    xml = tmp_path / "out" / "model.xml"
    model = ov.Core().read_model(str(xml))
    fake_quantize = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fake_quantize) > 30
    images = _images(checkpoints["config"], 1).numpy()
    _, compiled = _openvino(xml, images, f32=False)
    convs = [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]
    assert convs and all(p in ("u8", "i8") for p in convs), convs
    # The ONNX file holds standard QDQ pairs only (no NNCF custom op), and onnxruntime runs it.
    ops = [n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node]
    assert ops.count("QuantizeLinear") > 30 and "FakeQuantize" not in ops
    assert len(_onnxruntime(tmp_path / "out" / "model.onnx", images)) == 9
    assert data["precision"] == "int8"
    assert data["verification"]["openvino"]["int8_convolutions"] == len(convs)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_postprocessing_inside_gives_final_detections(
    checkpoints: dict, tmp_path: Path, fmt: str
) -> None:
    """The detections' format and bounds (their agreement with mmdet's predict mode is tested
    in test_deploy_graph on outputs spread enough to compare them one by one)."""
    out = tmp_path / "out"
    data = _export(checkpoints["fp32"], out, "--to", fmt, "--postprocessing", "--dynamic-batch")
    assert data["postprocessing"] is True and data["input_shape"] == [-1, 3, 96, 96]
    images = _images(checkpoints["config"], 3)
    path = out / ("model.xml" if fmt == "openvino" else "model.onnx")
    if fmt == "openvino":
        detections = _openvino(path, images.numpy())[0][0]
    else:
        detections = _onnxruntime(path, images.numpy())[0]
    assert detections.shape[1] == 7
    image_index, labels, scores, boxes = (
        detections[:, 0],
        detections[:, 1],
        detections[:, 2],
        detections[:, 3:],
    )
    assert set(image_index.tolist()) == {0, 1, 2}  # score_thr 0: every image has detections
    for index in range(3):
        mine = scores[image_index == index]
        assert len(mine) == 100  # max_per_img of the tiny config
        assert np.all(np.diff(mine) <= 0)  # sorted by score
    assert set(labels.tolist()) <= {0, 1, 2} and np.all(scores >= 0)
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])


@pytest.mark.slow
def test_metadata_round_trips_through_ir_onnx_and_json(checkpoints: dict, tmp_path: Path) -> None:
    from detcompress.deploy import onnx_backend, openvino_backend
    from detcompress.model.load import sha256_of

    out = tmp_path / "out"
    _export(checkpoints["int8"], out, "--to", "all", "--batch", "2")
    beside = json.loads((out / "model.json").read_text())
    from_ir = openvino_backend.read_metadata(out / "model.xml")
    from_onnx = onnx_backend.read_metadata(out / "model.onnx")
    assert from_ir == from_onnx
    assert from_ir == {k: v for k, v in beside.items() if k != "verification"}
    assert beside["classes"] == ["circle", "square", "triangle"]
    assert beside["input"]["shape"] == [2, 3, 96, 96]
    assert beside["preprocessing"]["pad_value"] == 114.0
    assert beside["postprocessing"] is True  # the checkpoint's nncf_compress_postprocessing
    assert beside["outputs"][0]["name"] == "detections"
    assert beside["nncf_config"]["compression"]["algorithm"] == "quantization"
    assert beside["source_checkpoint"]["sha256"] == sha256_of(checkpoints["int8"])
    assert "YOLOX" in beside["config_text"] and "openvino" in beside["versions"]


@pytest.mark.slow
def test_plain_mmdet_checkpoint_needs_config(checkpoints: dict, tmp_path: Path) -> None:
    state = torch.load(checkpoints["fp32"], map_location="cpu", weights_only=True)["state_dict"]
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": state}, plain)
    result = _invoke("export", plain, "--out", tmp_path / "a", "--to", "onnx")
    assert result.exit_code == 2
    assert "holds no config" in result.output and "--config" in result.output
    data = _export(plain, tmp_path / "b", "--to", "onnx", "--config", checkpoints["config"])
    assert data["verification"]["onnx"]["passed"]


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming what is wrong, nothing written


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    result = _invoke("export", tmp_path / "x.pth", "--to", "tflite")
    assert result.exit_code == 2
    assert "--to is 'tflite'; valid: openvino, onnx, all" in result.output


def test_unreadable_checkpoint_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    result = _invoke("export", garbage, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "garbage.pth" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_existing_output_folder_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"x")
    result = _invoke("export", ckpt, "--out", out)
    assert (
        result.exit_code == 2 and "already exists" in result.output and "--force" in result.output
    )
    assert (out / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_input_shape_not_divisible_is_refused(checkpoints: dict, tmp_path: Path) -> None:
    result = _invoke(
        "export", checkpoints["fp32"], "--out", tmp_path / "out", "--input-shape", "100", "96"
    )
    assert result.exit_code == 2
    assert "--input-shape 100 96: not divisible by 32" in result.output
    assert "128 96" in result.output and not (tmp_path / "out").exists()


def test_a_twin_must_also_score_alike() -> None:
    from detcompress.deploy.verify import detection_agreement

    reference = [np.array([[0, 0.9, 0, 0, 10, 10]])]
    same = [np.array([[0, 0.9, 0, 0, 10, 10]])]
    other_score = [np.array([[0, 0.5, 0, 0, 10, 10]])]  # same label and box
    assert detection_agreement(reference, same, 0.05, "fp32", -1) == (1.0, 2)
    assert detection_agreement(reference, other_score, 0.05, "fp32", -1) == (0.0, 2)


def test_failed_verification_names_boxes_of_a_model_that_has_not_converged() -> None:
    """An untrained YOLOX predicted boxes up to 3.5e19 and failed verification (mmdet's
    class-aware NMS is unreliable there): the failure says why, and only then."""
    from detcompress.deploy.verify import _compare_detections, _Reference

    huge = np.array([[0, 0.9, 0, 0, 3.5e19, 3.5e19], [1, 0.8, 0, 0, 10, 10]])
    other = np.array([[0, 0, 0.9, 5, 5, 50, 50]])  # [image, label, score, box]: no twin
    reference = _Reference(detections=[huge], limit=100, input_size=128)
    check = _compare_detections(reference, other, "fp32", 0.05)
    assert not check["passed"] and "has not converged" in check["summary"]
    assert "3.5e+19 on a 128-pixel input" in check["summary"]
    sane = _Reference(detections=[huge[1:]], limit=100, input_size=128)
    assert "converged" not in _compare_detections(sane, other, "fp32", 0.05)["summary"]


@pytest.mark.slow
def test_model_with_non_finite_outputs_is_not_exported(checkpoints: dict, tmp_path: Path) -> None:
    ckpt = torch.load(checkpoints["fp32"], map_location="cpu", weights_only=True)
    first_conv = next(k for k, v in ckpt["state_dict"].items() if v.dim() == 4)
    ckpt["state_dict"][first_conv][0] = float("nan")  # one filter: NaN spreads downstream
    diverged = tmp_path / "diverged.pth"
    torch.save(ckpt, diverged)
    result = _invoke("export", diverged, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output[-2000:]
    assert "hold NaN or inf" in result.output and "export refused" in result.output
    assert not (tmp_path / "out").exists()
