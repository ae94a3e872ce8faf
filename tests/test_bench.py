"""`detcompress bench` and the demo pipeline behind `make demo` (real OpenVINO, onnxruntime,
torch; tiny models, fractions of a second per measurement)."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
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
def demo_ws(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make demo's job on a copy of the tiny workspace: every step through the CLI (FP32
    training, int8 QAT, export, eval and bench of all, report)."""
    from detcompress.demo.pipeline import run_demo

    ws = tmp_path_factory.mktemp("demo") / "ws"
    shutil.copytree(tiny_workspace, ws, ignore=shutil.ignore_patterns("work_dirs"))
    run_demo(ws, qat_iters=2, bench_seconds=0.2, fp32_iters=3, qat_options=tuple(FAST_INIT))
    return ws


@pytest.fixture(scope="module")
def models(demo_ws: Path) -> dict[str, Path]:
    """The demo's FP32 checkpoint and IRs (static batch 1, NMS inside), plus the FP32 model
    exported with a dynamic batch to both formats."""
    fp32 = Path(json.loads((demo_ws / "results" / "train_fp32.json").read_text())["checkpoint"])
    dynamic = demo_ws / "exports" / "fp32_dynamic"
    result = runner.invoke(
        app,
        ["export", str(fp32), "--to", "all", "--dynamic-batch", "--out", str(dynamic),
         "--verify-images", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {
        "pth": fp32,
        "fp32_xml": demo_ws / "exports" / "fp32" / "model.xml",
        "int8_xml": demo_ws / "exports" / "int8" / "model.xml",
        "dynamic_xml": dynamic / "model.xml",
        "fp32_onnx": dynamic / "model.onnx",
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
        # speed-ups: medians of per-round ratios to the first model, from the rounds' numbers
        first, rounds = results[0]["rounds"], r["rounds"]
        assert len(rounds["latency_ms_median"]) == len(rounds["fps"]) == 5  # the default
        latency_ratios = [
            a / b
            for a, b in zip(first["latency_ms_median"], rounds["latency_ms_median"], strict=True)
        ]
        fps_ratios = [a / b for a, b in zip(rounds["fps"], first["fps"], strict=True)]
        assert rounds["speedup_per_round"] == pytest.approx(latency_ratios, rel=1e-3, abs=1e-4)
        assert rounds["throughput_speedup_per_round"] == pytest.approx(
            fps_ratios, rel=1e-3, abs=1e-4
        )
        # (the JSON rounds ratios to 4 decimals)
        assert r["speedup"] == pytest.approx(statistics.median(latency_ratios), rel=1e-3, abs=1e-4)
        assert r["throughput_speedup"] == pytest.approx(
            statistics.median(fps_ratios), rel=1e-3, abs=1e-4
        )
        interval = rounds["speedup_interval"]
        # 5 rounds: k=1, the interval is the range
        assert interval["low"] == pytest.approx(min(latency_ratios), rel=1e-3, abs=1e-4)
        assert interval["high"] == pytest.approx(max(latency_ratios), rel=1e-3, abs=1e-4)
        assert r["throughput_fps"] == pytest.approx(statistics.median(rounds["fps"]), rel=1e-3)
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
    order = [models["dynamic_xml"], models["fp32_onnx"], models["pth"]]
    _bench(
        [*map(str, order), "--precision", "f32", "--batch", "2", "--mode", "latency",
         "--seconds", "0.2", "--json", str(out)]
    )  # fmt: skip
    results = json.loads(out.read_text())["results"]
    assert results[0]["precision"] == "f32" and results[0]["float_precision"] == "f32"
    assert [r["backend"] for r in results] == ["openvino", "onnxruntime", "pytorch"]
    for r in results:
        assert r["batch"] == 2 and r["input_shape"][0] == 2
        assert r["throughput_fps"] is None and r["latency_ms"]["median"] > 0


def test_precision_per_model(models: dict[str, Path], tmp_path: Path) -> None:
    """`--precision f32,auto`: the same IR twice, once forced to f32 and once at the runtime's
    default, measured interleaved in one run (ssd300_int8_speed.py's int8 / f32 ratio)."""
    from detcompress.deploy import openvino_backend

    out = tmp_path / "b.json"
    xml = str(models["fp32_xml"])
    _bench(
        [xml, xml, "--precision", "f32,auto", "--mode", "latency", "--seconds", "0.2",
         "--rounds", "2", "--json", str(out)]
    )  # fmt: skip
    results = json.loads(out.read_text())["results"]
    default = openvino_backend.inference_precision(
        openvino_backend.compile_model(models["fp32_xml"])
    )
    assert [r["float_precision"] for r in results] == ["f32", default]


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
    results = models["fp32_xml"].parents[2] / "results"
    evals = ["--eval-json", str(results / "eval_fp32_ir.json")]
    evals += ["--eval-json", str(results / "eval_int8_ir.json")]
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
    for r, key in zip(data, ("fp32_ir", "int8_ir"), strict=True):
        expected = json.loads((results / f"eval_{key}.json").read_text())["bbox_mAP"]
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
        (["{fp32_xml}", "--precision", "bf16"], "--precision bf16: 'bf16' is not supported"),
        (["{fp32_xml}", "--precision", "f32,auto"], "2 values for 1 model(s); give one value"),
        (["{fp32_xml}", "--rounds", "0"], "--rounds 0: must be from 1 to 1000"),
        (["{fp32_xml}", "--layers", "-1"], "--layers -1: must be 0 (off) or more"),
        (["{fp32_onnx}", "--layers", "3"], "--layers: per-layer times come from OpenVINO's"),
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


def test_demo_pipeline_end_to_end(demo_ws: Path) -> None:
    """The report holds the numbers of the step JSONs, and the plot exists."""
    text = (demo_ws / "report.md").read_text()
    assert (demo_ws / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bench = json.loads((demo_ws / "results" / "bench.json").read_text())["results"]
    assert [r["backend"] for r in bench] == ["openvino", "openvino", "pytorch", "pytorch"]
    assert [r["precision"] for r in bench][1:] == ["int8", "f32", "fake-int8"]
    for name in ("fp32_ir", "int8_ir", "fp32_pth", "int8_pth"):
        evaluation = json.loads((demo_ws / "results" / f"eval_{name}.json").read_text())
        assert f"{evaluation['bbox_mAP']:.3f}" in text
    assert f"{bench[1]['latency_ms']['median']:.2f}" in text
    assert f"{bench[1]['speedup']:.2f}x" in text
    assert "int8 IR" in text and "default precision" in text
    assert "`detcompress compress" in text and "`detcompress bench" in text


def test_same_model_twice_is_within_noise_on_a_busy_machine(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Two copies of one IR, measured interleaved while another process keeps a core busy:
    the speed-up's interval holds 1.0 and the table says so (no assertion on times)."""
    out = tmp_path / "bench.json"
    xml = str(models["fp32_xml"])
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        result = _bench(
            [xml, xml, "--mode", "latency", "--seconds", "2", "--rounds", "8", "--json", str(out)]
        )
    finally:
        burner.kill()
        burner.wait()
    second = json.loads(out.read_text())["results"][1]
    assert len(second["rounds"]["speedup_per_round"]) == 8
    interval = second["rounds"]["speedup_interval"]
    assert interval["low"] <= 1.0 <= interval["high"] and interval["within_noise"]
    assert interval["confidence"] >= 0.95
    assert "within noise" in result.output


def test_rounds_interval_is_distribution_free() -> None:
    from detcompress.measure.latency import median_interval

    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0, 1 - 2 / 32)
    low, high, confidence = median_interval([float(v) for v in range(10)])
    assert (low, high) == (1.0, 8.0) and confidence == pytest.approx(1 - 2 * 11 / 1024)


def test_layers_profile_shows_int8_convolutions(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = [str(models["int8_xml"]), str(models["fp32_onnx"]), "--mode", "latency"]
    result = _bench([*args, "--seconds", "0.2", "--layers", "3", "--json", str(out)])
    int8, onnx = json.loads(out.read_text())["results"]
    profile = int8["layers"]
    kinds = {(g["type"], g["precision"]): g for g in profile["by_type"]}
    # every int8 convolution of the compiled model is timed as an i8 kernel
    assert kinds[("Convolution", "i8")]["layers"] == int8["int8_convolutions"] > 0
    assert sum(g["ms"] for g in profile["by_type"]) == pytest.approx(profile["total_ms"], rel=1e-3)
    assert len(profile["top"]) == 3
    assert [layer["ms"] for layer in profile["top"]] == sorted(
        (layer["ms"] for layer in profile["top"]), reverse=True
    )
    assert "layers" not in onnx  # performance counters are OpenVINO's
    assert "slowest layers" in result.output and "Convolution" in result.output
    refused = runner.invoke(app, ["bench", str(models["fp32_onnx"]), "--layers", "3"])
    assert refused.exit_code != 0 and "--layers" in refused.output


def test_dynamic_batch_export_has_no_model_api_outputs(models: dict[str, Path]) -> None:
    """OpenVINO's Model API feeds one image to a static input: an export with a dynamic batch
    has neither its `boxes`/`labels` outputs nor its `model_info`, and model.json says so."""
    import onnx
    import openvino as ov

    metadata = json.loads(models["dynamic_xml"].with_name("model.json").read_text())
    assert metadata["model_api"] is None
    assert [o["name"] for o in metadata["outputs"]] == ["detections"]
    ir = ov.Core().read_model(str(models["dynamic_xml"]))
    assert [o.get_any_name() for o in ir.outputs] == ["detections"]
    assert not ir.has_rt_info(["model_info", "model_type"])
    graph = onnx.load(str(models["fp32_onnx"]))
    assert [o.name for o in graph.graph.output] == ["detections"]
    assert not [p.key for p in graph.metadata_props if p.key.startswith("model_info")]
    static = ov.Core().read_model(str(models["fp32_xml"]))  # batch 1: Model API's outputs too
    assert [o.get_any_name() for o in static.outputs] == ["detections", "boxes", "labels"]
    assert static.get_rt_info(["model_info", "model_type"]).astype(str) == "ssd"
