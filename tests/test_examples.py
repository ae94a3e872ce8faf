"""The plain-runtime examples (`examples/detect_openvino.py`, `examples/detect_onnxruntime.py`)
run on the exported tiny demo and give exactly what `eval` predicts for the same images: images
of another size than the model's input, so that the examples' resize, padding and scaling back
are the test pipeline's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import eval_predictions, resized_dataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Not the model's square input: keep-ratio resize to 96 x 70, then padding below.
SIZE = (150, 110)  # width, height
IMAGES = 3


@pytest.fixture(scope="module")
def resized_val(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first validation images of the tiny demo at SIZE, with their annotations scaled."""
    target = tmp_path_factory.mktemp("resized") / "data"
    return resized_dataset(tiny_workspace / "data", target, SIZE, IMAGES)


@pytest.mark.parametrize(
    ("script", "model_file"),
    [("detect_openvino.py", "model.xml"), ("detect_onnxruntime.py", "model.onnx")],
)
def test_example_gives_evals_detections(
    script: str, model_file: str, tiny_fp32_export: Path, resized_val: Path, tmp_path: Path
) -> None:
    model = tiny_fp32_export / model_file
    expected = eval_predictions(model, resized_val, tmp_path / "eval")
    compared = 0
    for name, wanted in expected.items():
        out = tmp_path / f"{name}.json"
        run = subprocess.run(
            [sys.executable, str(EXAMPLES / script), str(model), str(resized_val / "val" / name),
             "--score-thr", "0", "--json", str(out), "--out", str(tmp_path / f"drawn_{name}")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        got = json.loads(out.read_text())
        # The same runtime on the same input gives the same detections, in the same order
        # (the tiny model's scores are near 0: any preprocessing difference reorders them).
        assert len(got) == len(wanted) > 0
        assert [d["label"] for d in got] == [d["label"] for d in wanted]
        np.testing.assert_allclose(
            [d["score"] for d in got], [d["score"] for d in wanted], rtol=1e-4, atol=1e-7
        )
        np.testing.assert_allclose(
            [d["box"] for d in got], [d["box"] for d in wanted], rtol=0, atol=1e-2
        )
        drawn = cv2.imread(str(tmp_path / f"drawn_{name}"))
        assert drawn is not None and drawn.shape[:2] == (SIZE[1], SIZE[0])
        compared += len(got)
    assert compared >= IMAGES


@pytest.mark.parametrize("script", ["detect_openvino.py", "detect_onnxruntime.py"])
def test_example_refuses_an_unreadable_image_in_one_line(
    script: str, tiny_fp32_export: Path, tmp_path: Path
) -> None:
    model = tiny_fp32_export / ("model.xml" if "openvino" in script else "model.onnx")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not pixels")
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / script), str(model), str(not_an_image)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: {not_an_image}: not an image opencv can read"
    ]
    assert not_an_image.read_text() == "not pixels"


def test_example_pads_a_dynamic_shape_export_to_what_the_image_needs() -> None:
    """A fixed input refuses an image that resizes beyond it; an export with --dynamic-shape
    takes it, padded to a multiple of the size divisor (the export size at least)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        from exported_model import preprocess  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(EXAMPLES))
    prep = {"height": 64, "width": 96, "resize_scale": [96, 64], "keep_ratio": True,
            "pad_value": 0, "size_divisor": 32}  # fmt: skip
    portrait = np.zeros((150, 60, 3), np.uint8)  # resizes to 38 x 96 (w x h): taller than 64
    dynamic = {"preprocessing": prep, "input": {"shape": [-1, 3, -1, -1], "dtype": "float32"}}
    blob, scale = preprocess(portrait, dynamic)
    assert blob.shape == (1, 3, 96, 96) and blob.dtype == np.float32
    np.testing.assert_allclose(scale, [38 / 60, 96 / 150], rtol=1e-6)
    fixed = {"preprocessing": prep, "input": {"shape": [1, 3, 64, 96], "dtype": "float32"}}
    with pytest.raises(SystemExit) as stopped:
        preprocess(portrait, fixed)
    assert stopped.value.code == 2
