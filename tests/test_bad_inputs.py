"""Wrong input never becomes a "successful" run, and every everyday bad file is one line.

Each case runs the real command and asserts the exit code 2, one `error:` line without a
traceback, that the message names what is wrong, and that nothing around it changed (checksums
of the folders the command was given)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import file_digests
from detcompress.cli import app

runner = CliRunner()


def _refused(args: list[Any], named: list[str], *watched: Path) -> None:
    """The command fails with exit code 2 and one line naming `named`; `watched` unchanged."""
    before = file_digests(*watched)
    result = runner.invoke(app, [str(a) for a in args])
    output = result.output.strip()
    assert result.exit_code == 2, output[-3000:]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == output.splitlines()[-1], output[-3000:]
    for fragment in named:
        assert fragment in errors[0], errors[0]
    assert file_digests(*watched) == before


@pytest.fixture(scope="module")
def files(
    tiny_fp32: dict, tiny_fp32_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Bad model files of every everyday kind, beside a good exported IR and ONNX model."""
    base = tmp_path_factory.mktemp("bad_files")
    export = tiny_fp32_export
    bad = base / "bad"
    bad.mkdir()
    (bad / "notes.pth").write_text("some notes\n")
    (bad / "empty.pth").write_bytes(b"")
    (bad / "folder.pth").mkdir()
    (bad / "random.pth").write_bytes(bytes(range(256)) * 4)
    (bad / "ir.pth").write_bytes((export / "model.xml").read_bytes()[:2000])
    (bad / "marker").write_text(str(Path(tiny_fp32["checkpoint"])))
    xml = (export / "model.xml").read_bytes()
    (bad / "cut_xml.xml").write_bytes(xml[: len(xml) // 2])
    (bad / "cut_xml.bin").write_bytes((export / "model.bin").read_bytes())
    (bad / "cut_bin.xml").write_bytes(xml)
    (bad / "cut_bin.bin").write_bytes((export / "model.bin").read_bytes()[:100_000])
    (bad / "cut.onnx").write_bytes((export / "model.onnx").read_bytes()[:100_000])
    (bad / "eval.json").write_text(json.dumps({"model": "x.xml", "bbox_mAP": 0.1}))
    cut_ckpt = Path(tiny_fp32["checkpoint"]).read_bytes()
    (bad / "truncated.pth").write_bytes(cut_ckpt[: len(cut_ckpt) // 3])
    return {"bad": bad, "export": export}


FILE_CASES = {
    "text_as_pth": (["eval", "{bad}/notes.pth"], ["notes.pth: is a text file"]),
    "empty_pth": (["export", "{bad}/empty.pth"], ["empty.pth: is an empty file"]),
    "folder_as_pth": (["eval", "{bad}/folder.pth"], ["folder.pth: is a folder"]),
    "folder_as_resume_file": (["bench", "{bad}/folder.pth"], ["folder.pth: is a folder"]),
    "binary_as_pth": (["bench", "{bad}/random.pth", "--seconds", "0.1"], ["not a PyTorch"]),
    "ir_xml_as_pth": (["export", "{bad}/ir.pth"], ["is an XML file", "eval and bench"]),
    "marker_as_checkpoint": (["resume", "{bad}/marker"], ["is a text file", "it names"]),
    "truncated_pth": (["eval", "{bad}/truncated.pth"], ["truncated or corrupt"]),
    "truncated_xml": (["eval", "{bad}/cut_xml.xml"], ["cut_xml.xml: not a readable OpenVINO"]),
    "truncated_bin": (["bench", "{bad}/cut_bin.xml"], ["cut_bin.xml: not a readable OpenVINO"]),
    "truncated_onnx": (["eval", "{bad}/cut.onnx"], ["cut.onnx: not a readable ONNX model"]),
    "truncated_onnx_bench": (["bench", "{bad}/cut.onnx"], ["cut.onnx: not a readable ONNX"]),
    "json_as_bench_model": (
        ["bench", "{export}/model.xml", "{bad}/eval.json"],
        ["eval.json: a JSON file is not a model", "--eval-json"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_file_is_one_line(case: str, files: dict[str, Path]) -> None:
    args, named = FILE_CASES[case]
    values = {k: str(v) for k, v in files.items()}
    # Nothing here may advise --trust-checkpoint: none of these files needs unpickling.
    _refused([a.format(**values) for a in args], named, files["bad"], files["export"])
    result = runner.invoke(app, [a.format(**values) for a in args])
    assert "--trust-checkpoint" not in result.output


Q = "compression: {algorithm: quantization, %s}"
BAD_PRESETS = {
    "empty": ("", ["compresses nothing", "leave --preset out"]),
    "only_input_info": ("input_info: {sample_size: [1, 3, 96, 96]}", ["compresses nothing"]),
    "target_device_trial": ("target_device: TRIAL\n" + Q % "preset: mixed", ["TRIAL", "valid:"]),
    "target_device_spr": ("target_device: CPU_SPR\n" + Q % "preset: mixed", ["CPU_SPR"]),
    "range_threshold": (
        Q % "initializer: {range: {type: threshold}}",
        ["'compression.initializer.range.type' is 'threshold'", "mean_percentile"],
    ),
    "range_mixed_min_max": (Q % "initializer: {range: {type: mixed_min_max}}", ["min_max"]),
    "quantize_inputs_false": (Q % "quantize_inputs: false", ["NNCF 3 always quantizes"]),
    "quantize_outputs_true": (Q % "quantize_outputs: true", ["does not quantize the model's"]),
    "onnx_custom_ops": (Q % "export_to_onnx_standard_ops: false", ["QuantizeLinear"]),
    "scope_overrides": (Q % "scope_overrides: {activations: {}}", ["scope_overrides"]),
    "batch_multiplier": (Q % "params: {batch_multiplier: 2}", ["accumulative_counts"]),
    "log_dir": ("log_dir: logs\n" + Q % "preset: mixed", ["'log_dir'", "--work-dir"]),
    "disable_shape_matching": (
        "disable_shape_matching: true\n" + Q % "preset: mixed",
        ["disable_shape_matching"],
    ),
    "percentile_over_100": (
        Q % "initializer: {range: {type: percentile, params: {max_percentile: 150}}}",
        ["max_percentile", "percentage"],
    ),
    "percentiles_crossed": (
        Q % "initializer: {range: {type: percentile, params: {min_percentile: 60, "
        "max_percentile: 40}}}",
        ["min_percentile (60) must be below max_percentile (40)"],
    ),
    "filter_importance_conflict": (
        "compression: {algorithm: filter_pruning, params: {filter_importance: L1, "
        "weight_importance: L2}}",
        ["filter_importance is 'L1'", "weight_importance is 'L2'"],
    ),
    "filter_importance_bad": (
        "compression: {algorithm: filter_pruning, params: {filter_importance: L3}}",
        ["filter_importance", "geometric_median"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PRESETS))
def test_bad_preset_is_refused(case: str, tiny_workspace: Path, tmp_path: Path) -> None:
    text, named = BAD_PRESETS[case]
    preset = tmp_path / f"{case}.yaml"
    preset.write_text(text)
    config = tiny_workspace / "configs" / "demo.py"
    _refused(["compress", config, "--preset", preset, "--work-dir", tmp_path / "w"],
             named, tmp_path, tiny_workspace / "configs")  # fmt: skip
    assert not (tmp_path / "w").exists()


def test_binary_preset_is_one_line(tiny_workspace: Path, tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_bytes(b"\xff\xfe\x00compression\x00\x81")
    _refused(["compress", tiny_workspace / "configs" / "demo.py", "--preset", preset],
             ["p.yaml: not a text file"], tmp_path)  # fmt: skip


def test_nncf_filter_pruning_name_is_accepted() -> None:
    from detcompress.config.presets import build_nncf_config

    nncf = build_nncf_config(
        {"compression": {"algorithm": "filter_pruning", "params": {"filter_importance": "L1"}}},
        "test",
    )
    assert nncf.algorithms[0].importance == "L1"  # type: ignore[attr-defined]


def test_signed_and_percentiles_reach_nncf() -> None:
    from detcompress.compression.nncf_adapter import quantization_parameters, range_estimator
    from detcompress.config.presets import build_nncf_config

    nncf = build_nncf_config(
        {
            "compression": {
                "algorithm": "quantization",
                "weights": {"signed": True},
                "initializer": {
                    "range": {
                        "type": "mean_percentile",
                        "params": {"min_percentile": 1.0, "max_percentile": 99.5},
                    }
                },
            }
        },
        "test",
    )
    algo = nncf.algorithms[0]
    assert quantization_parameters(algo.weights).signedness_to_force is True  # type: ignore[attr-defined]
    assert quantization_parameters(algo.activations).signedness_to_force is None  # type: ignore[attr-defined]
    estimator = range_estimator(algo)  # type: ignore[arg-type]
    assert estimator.min.quantile_outlier_prob == pytest.approx(0.01)
    assert estimator.max.quantile_outlier_prob == pytest.approx(0.005)


def _config(tmp_path: Path, tiny_workspace: Path, extra: str) -> Path:
    config = tmp_path / "configs" / "other.py"
    config.parent.mkdir(parents=True, exist_ok=True)
    text = (tiny_workspace / "configs" / "demo.py").read_text()
    data = repr(str(tiny_workspace / "data") + "/")
    assert "'{{ fileDirname }}/../data/'" in text
    config.write_text(text.replace("'{{ fileDirname }}/../data/'", data) + extra)
    return config


def test_cfg_option_of_the_wrong_type_is_refused(tiny_workspace: Path, tmp_path: Path) -> None:
    config = tiny_workspace / "configs" / "demo.py"
    _refused(["compress", config, "--dry-run", "--cfg-options", "optim_wrapper.optimizer.lr=abc"],
             ["'optim_wrapper.optimizer.lr'", "'abc'", "expected a number"],
             tiny_workspace / "configs")  # fmt: skip
    _refused(["compress", config, "--dry-run", "--cfg-options", "randomness.seed=yes"],
             ["'randomness.seed'", "expected a number"])  # fmt: skip


def test_cfg_option_list_for_a_tuple_becomes_a_tuple(tiny_workspace: Path) -> None:
    """YAML has no tuples: `scale=[160,128]` for the pipeline's Resize scale (a tuple, which mmcv
    requires) is applied as a tuple, not passed on as a list for mmcv to reject."""
    from detcompress.config.mmdet_config import load_config
    from detcompress.errors import DetcompressError

    options = ["test_dataloader.dataset.pipeline.1.scale=[160,128]",
               "train_cfg.max_iters=[3]"]  # fmt: skip
    loaded = load_config(tiny_workspace / "configs" / "demo.py", cfg_options=options[:1])
    assert loaded.cfg.test_dataloader.dataset.pipeline[1].scale == (160, 128)
    with pytest.raises(DetcompressError, match="expected a number"):  # a list stays refused
        load_config(tiny_workspace / "configs" / "demo.py", cfg_options=options[1:])


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (
            "dict(_delete_=True, type='ResNet', depth=18)",
            ["'model.type' is ResNet", "not an mmdet detector"],
        ),
        ("dict(_delete_=True, type='NoSuchDetector')", ["'model' (NoSuchDetector) cannot be"]),
    ],
)
def test_config_whose_model_is_not_a_detector(
    model: str, named: list[str], tiny_workspace: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, tiny_workspace, f"\nmodel = {model}\n")
    _refused(["compress", config, "--max-iters", "1", "--work-dir", tmp_path / "w"],
             named, tmp_path / "configs")  # fmt: skip
    assert not list((tmp_path / "w").glob("*.pth"))


@pytest.mark.slow
def test_load_from_another_models_checkpoint_is_refused_unless_allowed(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"backbone.stem.conv.conv.weight": torch.zeros(3),
                               "fc.weight": torch.zeros(2, 2)}}, other)  # fmt: skip
    config = tiny_workspace / "configs" / "demo.py"
    _refused(["compress", config, "--load-from", other, "--max-iters", "1",
              "--work-dir", tmp_path / "w"],
             ["other.pth: loaded 0 of the model's", "(0% of its weights)", "unexpected 1",
              "other shape 1", "--allow-partial-load"], tmp_path)  # fmt: skip
    allowed = runner.invoke(
        app,
        ["compress", str(config), "--load-from", str(other), "--max-iters", "1",
         "--work-dir", str(tmp_path / "w"), "--allow-partial-load"],
    )  # fmt: skip
    assert allowed.exit_code == 0, allowed.output[-3000:]
    assert "loaded 0 of the model's" in allowed.output


@pytest.fixture(scope="module")
def ptq(tiny_ptq: Path) -> Path:
    return tiny_ptq


@pytest.mark.slow
def test_resume_with_nothing_to_train_says_so(tiny_fp32: dict, ptq: Path) -> None:
    finished = Path(tiny_fp32["checkpoint"])  # iteration 2 of a 2-iteration run
    _refused(["resume", finished], ["nothing to train", "iteration 2", "ends at 2",
                                    "--max-iters N with N > 2"], finished)  # fmt: skip
    _refused(["resume", finished, "--max-iters", "1"], ["--max-iters 1 ends at 1"],
             finished)  # fmt: skip
    # (the checkpoints only: in this one test process mmengine's logger of the earlier run
    # still writes into its log file there)
    _refused(["resume", ptq], ["post-training", "compress CONFIG --load-from"], ptq)


@pytest.mark.slow
def test_int8_checkpoint_with_a_config_of_other_classes(
    ptq: Path, tiny_workspace: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, tiny_workspace, "\nmodel['bbox_head']['num_classes'] = 5\n")
    _refused(["eval", ptq, "--config", config],
             ["ptq.pth: its compressed weights do not fit", "size mismatch", "--config"],
             ptq)  # fmt: skip


@pytest.mark.slow
def test_bad_options_are_one_line(tiny_fp32: dict, files: dict[str, Path], tmp_path: Path) -> None:
    ckpt = Path(tiny_fp32["checkpoint"])
    xml = files["export"] / "model.xml"
    _refused(["bench", xml, "--seconds", "inf"], ["--seconds inf", "at most"])
    _refused(["bench", xml, "--seconds", "nan"], ["--seconds nan"])
    _refused(["export", ckpt, "--out", tmp_path / "x", "--dynamic-batch", "--batch", "4"],
             ["--batch 4 with --dynamic-batch"], ckpt.parent)  # fmt: skip
    _refused(["export", ckpt, "--out", tmp_path / "x", "--input-shape", "-96", "96"],
             ["--input-shape -96 96", "positive"], ckpt.parent)  # fmt: skip
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_eval_options_reach_a_checkpoints_model(tiny_fp32: dict) -> None:
    from detcompress.model.load import load_detector

    loaded = load_detector(
        Path(tiny_fp32["checkpoint"]), cfg_options=["model.test_cfg.score_thr=0.77"]
    )
    assert loaded.model.test_cfg.score_thr == 0.77
    assert loaded.model.bbox_head.test_cfg.score_thr == 0.77


@pytest.mark.slow
def test_eval_json_without_detections_is_valid_bench_input(tiny_fp32: dict, tmp_path: Path) -> None:
    """A model with no detection above score_thr: eval still writes the mAP keys (0), and
    bench takes eval's own file."""
    model = tmp_path / "model.pth"
    shutil.copy(tiny_fp32["checkpoint"], model)
    report = tmp_path / "eval.json"
    result = runner.invoke(
        app, ["eval", str(model), "--json", str(report),
              "--cfg-options", "model.test_cfg.score_thr=1.1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    data = json.loads(report.read_text())
    assert data["bbox_mAP"] == 0.0 and data["bbox_mAP_50"] == 0.0
    bench = runner.invoke(
        app, ["bench", str(model), "--eval-json", str(report), "--seconds", "0.1",
              "--mode", "latency"],
    )  # fmt: skip
    assert bench.exit_code == 0, bench.output[-3000:]


def test_shortened_schedule_says_what_it_changes(tmp_path: Path) -> None:
    config = tmp_path / "r18.py"
    config.write_text("_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'\n")
    plan = runner.invoke(app, ["compress", str(config), "--max-iters", "20", "--dry-run"])
    assert plan.exit_code == 0, plan.output[-3000:]
    assert "schedule: 20 iterations instead of the config's 12 epochs" in plan.output
    assert (
        "(LinearLR, iterations 0-500) is cut: the run ends at iteration 20 inside the warm-up"
        in (plan.output)
    )
    assert "(MultiStepLR, epochs 0-12) counts epochs: it does not step" in plan.output
    fitted = runner.invoke(
        app,
        ["compress", str(config), "--max-iters", "20", "--dry-run",
         "--cfg-options", "param_scheduler.0.end=10"],
    )  # fmt: skip
    assert fitted.exit_code == 0, fitted.output[-3000:]
    assert "LinearLR, iterations 0-10" not in fitted.output  # fits now: nothing to say
    assert "inside the warm-up" not in fitted.output


def test_one_device_vocabulary_for_every_command() -> None:
    """eval/bench take OpenVINO's names, compress/resume torch's; either spelling works in
    every command, and an unknown one is still refused with the valid list."""
    from detcompress.model.detector import openvino_device_name, select_device, torch_device_name

    assert [openvino_device_name(d) for d in ("cpu", "cuda", "gpu", "Auto", "GPU")] == [
        "CPU", "GPU", "GPU", "AUTO", "GPU"
    ]  # fmt: skip
    assert [torch_device_name(d) for d in ("CPU", "GPU", "cuda", "AUTO")] == [
        "cpu", "cuda", "cuda", "auto"
    ]  # fmt: skip
    assert openvino_device_name("tpu") == "tpu" and torch_device_name("TPU") == "TPU"
    assert select_device("AUTO") in ("cpu", "cuda")


@pytest.mark.slow
def test_eval_and_bench_take_the_lowercase_device(tiny_fp32: dict, tiny_fp32_export: Path) -> None:
    xml = tiny_fp32_export / "model.xml"
    bench = runner.invoke(app, ["bench", str(xml), "--device", "cpu", "--seconds", "0.1",
                                "--mode", "latency"])  # fmt: skip
    assert bench.exit_code == 0, bench.output[-3000:]
    evaluated = runner.invoke(app, ["eval", str(xml), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output[-3000:]


def test_export_refuses_bad_input_format_and_dynamic_shape_with_a_batch(
    tiny_fp32: dict, tmp_path: Path
) -> None:
    """`--input` other than the two formats, and `--dynamic-shape` with a fixed `--batch`: one
    line each, before the checkpoint is read, and no output folder appears."""
    out = tmp_path / "out"
    checkpoint = Path(tiny_fp32["checkpoint"])
    _refused(["export", checkpoint, "--out", out, "--input", "u8"],
             ["--input is 'u8'", "f32-nchw, u8-nhwc"], checkpoint.parent)  # fmt: skip
    _refused(["export", checkpoint, "--out", out, "--dynamic-shape", "--batch", "2"],
             ["--batch 2", "--dynamic-shape"], checkpoint.parent)  # fmt: skip
    assert not out.exists()
