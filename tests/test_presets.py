"""Presets: bundled ones load, merge order, and precise one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from detcompress.cli import app
from detcompress.config.mmdet_config import load_config
from detcompress.config.presets import build_nncf_config, bundled_presets, read_preset_file
from detcompress.errors import DetcompressError, PresetError

runner = CliRunner()

EXPECTED_PRESETS = {
    "int8": ["quantization"],
    "int8_mixed": ["quantization"],
    "magnitude_sparsity": ["magnitude_sparsity"],
    "filter_pruning": ["filter_pruning"],
    "rb_sparsity": ["rb_sparsity"],
    "int8_magnitude_sparsity": ["magnitude_sparsity", "quantization"],
    "int8_filter_pruning": ["filter_pruning", "quantization"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_bundled_preset_loads(name: str) -> None:
    path = bundled_presets()[name]
    nncf = build_nncf_config(read_preset_file(path), str(path))
    assert [a.name for a in nncf.algorithms] == EXPECTED_PRESETS[name]


def test_int8_preset_values() -> None:
    path = bundled_presets()["int8"]
    q = build_nncf_config(read_preset_file(path), str(path)).algorithms[0]
    assert (q.num_init_steps, q.num_bn_adaptation_steps) == (10, 30)
    assert (q.weights.mode, q.activations.mode, q.preset) == (
        "symmetric",
        "symmetric",
        "performance",
    )
    mixed_path = bundled_presets()["int8_mixed"]
    mixed = build_nncf_config(read_preset_file(mixed_path), str(mixed_path)).algorithms[0]
    assert (mixed.activations.mode, mixed.preset) == ("asymmetric", "mixed")


def test_preset_magnitude_sparsity_schedule() -> None:
    path = bundled_presets()["magnitude_sparsity"]
    algo = build_nncf_config(read_preset_file(path), str(path)).algorithms[0]
    assert list(algo.multistep_levels) == [0.3, 0.5, 0.7]  # type: ignore[attr-defined]


def test_merge_order_config_then_preset_then_cfg_options(
    inline_config: Path, tmp_path: Path
) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "compression": {
                    "algorithm": "quantization",
                    "initializer": {"range": {"num_init_steps": 7}},
                }
            }
        )
    )
    loaded = load_config(
        inline_config,
        str(preset),
        [
            "nncf_config.compression.initializer.batchnorm_adaptation.num_bn_adaptation_steps=9",
            "nncf_config.target_device=CPU",
        ],
    )
    q = loaded.nncf.algorithms[0]
    assert q.num_init_steps == 7  # preset beats the config's inline value (2)
    assert q.range_type == "min_max"  # kept from the config: dicts merge recursively
    assert q.weights.mode == "asymmetric"  # kept from the config
    assert q.num_bn_adaptation_steps == 9  # --cfg-options beat the config (3)
    assert loaded.nncf.target_device == "CPU"
    assert loaded.nncf.input_info[0].sample_size == (1, 3, 320, 320)
    assert loaded.sources == [f"{inline_config} (nncf_config)", str(preset), "--cfg-options"]


def test_json_nncf_config_file_accepted_as_is(tmp_path: Path, inline_config: Path) -> None:
    # A config file from NNCF's samples: sample-script keys are accepted (and ignored).
    path = tmp_path / "ssd300_vgg_voc_int8.json"
    path.write_text(
        '{"model": "ssd_vgg", "batch_size": 32, "input_info": {"sample_size": [2, 3, 300, 300]},'
        ' "compression": {"algorithm": "quantization",'
        ' "initializer": {"range": {"num_init_samples": 160}}}}'
    )
    loaded = load_config(inline_config, str(path))
    assert loaded.nncf.algorithms[0].num_init_samples == 160
    assert any("'model'" in w for w in loaded.warnings)


def test_cfg_options_reach_mmdet_config(inline_config: Path) -> None:
    loaded = load_config(
        inline_config, None, ["train_dataloader.batch_size=3", "model.bbox_head.num_classes=5"]
    )
    assert loaded.cfg.train_dataloader.batch_size == 3
    assert loaded.cfg.model.bbox_head.num_classes == 5


def test_no_nncf_config_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "plain.py"
    path.write_text("_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'\n")
    assert load_config(path).nncf.is_empty


# Each bad preset -> (file content, the fragments its one-line error must contain).
BAD_PRESETS = {
    "unknown_top_key": (
        "compresion: {algorithm: quantization}",
        ["unknown key 'compresion'", "did you mean 'compression'?"],
    ),
    "unknown_nested_key": (
        "compression: {algorithm: quantization, initializer: {rnage: {}}}",
        ["'compression.initializer.rnage'", "did you mean 'range'?"],
    ),
    "wrong_type": (
        "compression: {algorithm: quantization, initializer: {range: {num_init_steps: ten}}}",
        ["'compression.initializer.range.num_init_steps' must be a integer", "'ten'"],
    ),
    "unknown_algorithm": (
        "compression: {algorithm: quantisation}",
        ["'quantisation'", "did you mean 'quantization'?"],
    ),
    "removed_algorithm": (
        "compression: {algorithm: movement_sparsity}",
        ["NNCF 3 removed movement sparsity", "magnitude_sparsity"],
    ),
    "removed_hawq": (
        "compression: {algorithm: quantization, initializer: {precision: {type: hawq}}}",
        ["'compression.initializer.precision'", "HAWQ"],
    ),
    "aa_training_unknown_param": (
        "accuracy_aware_training: {params: {patience: 3}}\ncompression: {algorithm: quantization}",
        ["'accuracy_aware_training.params.patience'", "did you mean 'patience_epochs'?"],
    ),
    "bad_choice": (
        "compression: {algorithm: quantization, weights: {mode: symetric}}",
        ["'compression.weights.mode'", "did you mean 'symmetric'?"],
    ),
    "bits_4": (
        "compression: {algorithm: quantization, weights: {bits: 4}}",
        ["'compression.weights.bits'", "8"],
    ),
    "pruning_target_out_of_range": (
        "compression: {algorithm: filter_pruning, params: {pruning_target: 1.5}}",
        ["'compression.params.pruning_target' is 1.5", "(0, 1)"],
    ),
    "multistep_lengths": (
        "compression: {algorithm: magnitude_sparsity, params: {schedule: multistep, "
        "multistep_steps: [1, 2, 3], multistep_sparsity_levels: [0.3, 0.5]}}",
        ["multistep_sparsity_levels has 2 entries and multistep_steps 3"],
    ),
    "unknown_schedule": (
        "compression: {algorithm: filter_pruning, params: {schedule: cosine}}",
        ["'compression.params.schedule' is 'cosine'", "baseline, exponential"],
    ),
    "no_algorithm": (
        "compression: [{algorithm: quantization}, {initializer: {}}]",
        ["'compression[1]' has no 'algorithm'"],
    ),
    "duplicate_algorithm": (
        "compression: [{algorithm: quantization}, {algorithm: quantization}]",
        ["lists 'quantization' 2 times"],
    ),
    "steps_and_samples": (
        "compression: {algorithm: quantization, initializer: "
        "{range: {num_init_steps: 1, num_init_samples: 8}}}",
        ["sets both 'num_init_samples' and 'num_init_steps'"],
    ),
    "not_a_mapping": ("- quantization", ["a preset must be a mapping"]),
    "invalid_yaml": ("compression: {algorithm: [quantization", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PRESETS))
def test_bad_preset_gives_one_precise_line(case: str, tmp_path: Path, inline_config: Path) -> None:
    text, fragments = BAD_PRESETS[case]
    preset = tmp_path / f"{case}.yaml"
    preset.write_text(text)
    result = runner.invoke(
        app, ["compress", str(inline_config), "--preset", str(preset), "--dry-run"]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert str(preset) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


BAD_CONFIGS = {
    "missing_config": (None, [], ["config file not found"]),
    "syntax_error": ("model = dict(\n", [], ["syntax_error.py: line 1: '(' was never closed"]),
    "lazy_import": (
        "from mmdet.models import RTMDet\nmodel = dict(type=RTMDet)\n",
        [],
        ["lazy-import config", "_base_"],
    ),
    "bad_base": ("_base_ = 'mmdet::nope/missing.py'\n", [], ["cannot load mmdet config"]),
    "cfg_option_not_pair": (
        None,
        ["--cfg-options", "batch_size"],
        ["'batch_size' is not key=value"],
    ),
    "cfg_option_unknown_key": (
        None,
        ["--cfg-options", "train_dataloder.batch_size=2"],
        ["unknown key 'train_dataloder.batch_size'", "did you mean 'train_dataloader'?"],
    ),
    "cfg_option_bad_nncf_key": (
        None,
        ["--cfg-options", "nncf_config.compression.algoritm=quantization"],
        ["--cfg-options", "did you mean 'algorithm'?"],
    ),
    "postprocessing_not_bool": (
        None,
        ["--cfg-options", "nncf_compress_postprocessing=maybe"],
        ["'nncf_compress_postprocessing' must be true or false"],
    ),
    "inline_nncf_config_bad": (
        "_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'\n"
        "nncf_config = dict(compression=dict(algorithm='quantization', bits=8))\n",
        [],
        ["(nncf_config)", "unknown key 'compression.bits'"],
    ),
    "unknown_preset_name": (None, ["--preset", "int16"], ["unknown preset 'int16'", "int8"]),
    "missing_preset_file": (
        None,
        ["--preset", "nowhere.yaml"],
        ["nowhere.yaml: preset file not found"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_gives_one_precise_line(case: str, tmp_path: Path) -> None:
    text, extra, fragments = BAD_CONFIGS[case]
    config = tmp_path / f"{case}.py"
    if case != "missing_config":
        config.write_text(text or "_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'\n")
    result = runner.invoke(app, ["compress", str(config), *extra, "--dry-run"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_dry_run_prints_merged_config_and_plan(inline_config: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "compress",
            str(inline_config),
            "--preset",
            "int8",
            "--dry-run",
            "--max-iters",
            "7",
            "--work-dir",
            str(tmp_path / "wd"),
            "--cfg-options",
            "nncf_config.compression.initializer.range.num_init_steps=3",
            "train_dataloader.batch_size=2",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    merged = yaml.safe_load(out.split("# plan")[0])
    assert merged["compression"]["initializer"]["range"]["num_init_steps"] == 3
    assert merged["compression"]["weights"]["mode"] == "symmetric"  # preset beat the inline value
    assert merged["input_info"] == {"sample_size": [1, 3, 320, 320]}
    assert "run:         compression: quantization" in out
    assert "model:       RTMDet" in out
    assert "schedule:    7 iterations" in out
    assert "batch size:  2" in out
    assert f"work dir:    {tmp_path / 'wd'}" in out
    assert not (tmp_path / "wd").exists()  # a dry run writes nothing


def test_preset_error_is_a_detcompress_error(tmp_path: Path) -> None:
    bad = tmp_path / "b.yaml"
    bad.write_text("compression: 3")
    with pytest.raises(PresetError):
        build_nncf_config(read_preset_file(bad), str(bad))
    assert issubclass(PresetError, DetcompressError)


def test_bundled_preset_name_wins_over_a_folder_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--preset int8` run where a work dir called `int8` exists is still the bundled preset; a
    folder that is not a bundled name is refused as a preset file."""
    from detcompress.config.presets import resolve_preset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "int8").mkdir()
    (tmp_path / "mine").mkdir()
    assert resolve_preset("int8") == bundled_presets()["int8"]
    with pytest.raises(PresetError, match="mine: preset file not found"):
        resolve_preset("mine")
