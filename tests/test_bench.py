"""`detcompress bench` and the demo pipeline behind `make demo` (real OpenVINO, onnxruntime,
torch; tiny models, fractions of a second per measurement)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import FAST_INIT
from detcompress.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()

RESULT_KEYS = {
    "model",
    "backend",
    "precision",
    "latency_ms",
    "throughput_fps",
    "size_mb",
    "speedup",
}


@pytest.fixture(scope="module")
def models(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An FP32 checkpoint of the tiny workspace, its IR and ONNX, and an int8 IR from PTQ."""
    out = tmp_path_factory.mktemp("bench_models")
    config = tiny_workspace / "configs" / "demo.py"
    result = runner.invoke(
        app,
        [
            "compress",
            str(config),
            "--work-dir",
            str(out / "fp32"),
            "--max-iters",
            "2",
            "--json",
            str(out / "fp32.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    fp32 = Path(json.loads((out / "fp32.json").read_text())["checkpoint"])
    result = runner.invoke(
        app,
        [
            "compress",
            str(config),
            "--preset",
            "int8",
            "--load-from",
            str(fp32),
            "--max-iters",
            "0",
            "--work-dir",
            str(out / "ptq"),
            "--json",
            str(out / "ptq.json"),
            "--cfg-options",
            *FAST_INIT,
        ],
    )
    assert result.exit_code == 0, result.output
    int8 = Path(json.loads((out / "ptq.json").read_text())["checkpoint"])
    # FP32 with a dynamic batch (any --batch runs), int8 with the default static batch 1
    for name, ckpt, to, batch in (
        ("fp32", fp32, "all", "--dynamic-batch"),
        ("int8", int8, "openvino", "--batch=1"),
    ):
        result = runner.invoke(
            app,
            [
                "export",
                str(ckpt),
                "--to",
                to,
                "--out",
                str(out / f"export_{name}"),
                "--verify-images",
                "2",
                batch,
            ],
        )
        assert result.exit_code == 0, result.output
    return {
        "pth": fp32,
        "fp32_xml": out / "export_fp32" / "model.xml",
        "fp32_onnx": out / "export_fp32" / "model.onnx",
        "int8_xml": out / "export_int8" / "model.xml",
    }


def _bench(args: list[str]) -> dict:
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 0, result.output
    return result


def test_json_schema_and_side_by_side_ratios(models: dict[str, Path], tmp_path: Path) -> None:
    order = [models["fp32_xml"], models["int8_xml"], models["fp32_onnx"], models["pth"]]
    out = tmp_path / "bench.json"
    result = _bench([*map(str, order), "--seconds", "0.3", "--json", str(out)])
    data = json.loads(out.read_text())
    assert set(data) >= {"machine", "results"}
    assert {"cpu", "logical_cores", "openvino"} <= set(data["machine"])
    results = data["results"]
    assert [r["model"] for r in results] == [str(p) for p in order]  # the order given
    assert [r["backend"] for r in results] == ["openvino", "openvino", "onnxruntime", "pytorch"]
    for r in results:
        assert set(r) >= RESULT_KEYS
        assert {"median", "p90", "p99"} <= set(r["latency_ms"])
        assert 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert r["latency_calls"] >= 5
        assert r["throughput_fps"] > 0
        # speed-ups are ratios to the first model, computed from the numbers in the same JSON
        first = results[0]
        assert r["speedup"] == pytest.approx(
            first["latency_ms"]["median"] / r["latency_ms"]["median"], rel=1e-3, abs=1e-3
        )
        assert r["throughput_speedup"] == pytest.approx(
            r["throughput_fps"] / first["throughput_fps"], rel=1e-3, abs=1e-3
        )
    assert results[0]["speedup"] == 1.0
    # what each model really runs in, read from the runtime
    assert results[0]["precision"] in ("f32", "bf16") and results[0]["int8_convolutions"] == 0
    assert results[1]["precision"] == "int8" and results[1]["int8_convolutions"] > 0
    assert results[2]["precision"] == "f32"
    # sizes on disk: the int8 IR's weights are int8
    assert results[1]["size_mb"] < 0.5 * results[0]["size_mb"]
    assert results[0]["size_mb"] > models["fp32_xml"].with_suffix(".bin").stat().st_size / 1e6
    assert "speed-up" in result.output and "int8" in result.output


def test_precision_f32_and_batch(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    _bench(
        [
            str(models["fp32_xml"]),
            "--precision",
            "f32",
            "--batch",
            "2",
            "--mode",
            "latency",
            "--seconds",
            "0.2",
            "--json",
            str(out),
        ]
    )
    (r,) = json.loads(out.read_text())["results"]
    assert r["precision"] == "f32" and r["float_precision"] == "f32"
    assert r["batch"] == 2 and r["input_shape"][0] == 2
    assert r["throughput_fps"] is None and r["latency_ms"]["median"] > 0


def test_plot_bars_and_latency_vs_map(models: dict[str, Path], tmp_path: Path) -> None:
    bars = tmp_path / "bars.png"
    _bench(
        [
            str(models["fp32_xml"]),
            str(models["int8_xml"]),
            "--mode",
            "latency",
            "--seconds",
            "0.2",
            "--plot",
            str(bars),
        ]
    )
    assert bars.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evals = []
    for key in ("fp32_xml", "int8_xml"):
        path = tmp_path / f"eval_{key}.json"
        result = runner.invoke(app, ["eval", str(models[key]), "--json", str(path)])
        assert result.exit_code == 0, result.output
        evals += ["--eval-json", str(path)]
    scatter, out = tmp_path / "scatter.png", tmp_path / "b.json"
    result = _bench(
        [
            str(models["fp32_xml"]),
            str(models["int8_xml"]),
            "--mode",
            "latency",
            "--seconds",
            "0.2",
            "--plot",
            str(scatter),
            "--json",
            str(out),
            *evals,
        ]
    )
    assert scatter.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert scatter.read_bytes() != bars.read_bytes()
    data = json.loads(out.read_text())["results"]
    for r, key in zip(data, ("fp32_xml", "int8_xml"), strict=True):
        expected = json.loads((tmp_path / f"eval_{key}.json").read_text())["bbox_mAP"]
        assert r["metrics"]["bbox_mAP"] == expected
    assert "bbox mAP" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.xml"], "missing.xml: no such file"),
        (["{fp32_xml}", "--device", "TPU"], "--device TPU: not supported; valid: CPU, GPU, AUTO"),
        (["{fp32_onnx}", "--device", "GPU"], "onnxruntime's CPU provider only"),
        (["{fp32_xml}", "--seconds", "0"], "--seconds 0.0: must be more than 0"),
        (["{fp32_xml}", "--mode", "fast"], "--mode fast: not supported; valid: latency"),
        (["{int8_xml}", "--batch", "2"], "batch is fixed at 1, not 2; export with --batch 2"),
        (["{fp32_xml}", "--plot", "out.jpg"], "--plot out.jpg: must be a .png file"),
        (["{fp32_xml}", "--eval-json", "{fp32_xml}"], "not a readable eval JSON"),
        (["model.txt"], "unknown model file type '.txt'"),
    ],
)
def test_bad_input_is_one_clear_line(
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.txt").write_text("x")
    args = [a.format(**{k: str(v) for k, v in models.items()}) for a in args]
    result = runner.invoke(app, ["bench", *args, "--json", "out.json"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.json").exists()


def test_missing_ir_weights(models: dict[str, Path], tmp_path: Path) -> None:
    xml = tmp_path / "model.xml"
    shutil.copy(models["fp32_xml"], xml)
    result = runner.invoke(app, ["bench", str(xml)])
    assert result.exit_code != 0 and "model.bin is missing beside it" in result.output


def test_demo_pipeline_end_to_end(tiny_workspace: Path, tmp_path: Path) -> None:
    """make demo's job on the tiny workspace: every step through the CLI, then the report whose
    numbers are the ones in the step JSONs."""
    from detcompress.demo_pipeline import run_demo

    ws = tmp_path / "ws"
    shutil.copytree(tiny_workspace, ws, ignore=shutil.ignore_patterns("work_dirs"))
    report = run_demo(
        ws, qat_iters=2, bench_seconds=0.2, fp32_iters=3, qat_options=tuple(FAST_INIT)
    )
    text = report.read_text()
    assert (ws / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bench = json.loads((ws / "results" / "bench.json").read_text())["results"]
    assert [r["backend"] for r in bench] == ["openvino", "openvino", "pytorch", "pytorch"]
    assert bench[1]["precision"] == "int8"
    for name in ("fp32_ir", "int8_ir", "fp32_pth", "int8_pth"):
        evaluation = json.loads((ws / "results" / f"eval_{name}.json").read_text())
        assert f"{evaluation['bbox_mAP']:.3f}" in text
    assert f"{bench[1]['latency_ms']['median']:.2f}" in text
    assert f"{bench[1]['speedup']:.2f}x" in text
    assert "int8 IR" in text and "default precision" in text
    assert text.count("| detcompress") == 0 and "`detcompress compress" in text
