"""int8 quantization-aware training through NNCF 3, end to end on the real stack (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST_INIT, nncf_operation_names, outputs_in_fresh_process
from detcompress.cli import app

runner = CliRunner()
pytestmark = pytest.mark.slow


def _compress(config: Path, work_dir: Path, *extra: str) -> tuple[Any, dict]:
    out = work_dir.parent / f"{work_dir.name}.json"
    result = runner.invoke(
        app,
        ["compress", str(config), "--work-dir", str(work_dir), "--json", str(out), *extra],
    )
    data = json.loads(out.read_text()) if out.exists() else {}
    return result, data


@pytest.fixture(scope="module")
def qat_run(
    tiny_workspace: Path, tiny_fp32: dict, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """4 QAT iterations from an FP32 checkpoint, checkpoints at iterations 2 and 4."""
    base = tmp_path_factory.mktemp("qat")
    config = tiny_workspace / "configs" / "demo.py"
    result, data = _compress(
        config, base / "qat", "--preset", "int8", "--load-from", tiny_fp32["checkpoint"],
        "--max-iters", "4", "--cfg-options", *FAST_INIT, "default_hooks.checkpoint.interval=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"base": base, "config": config, "data": data, "output": result.output,
            "fp32": tiny_fp32["checkpoint"]}  # fmt: skip


def test_qat_reports_quantizers_and_writes_compressed_checkpoint(qat_run: dict) -> None:
    data = qat_run["data"]
    assert data["compressed"] is True and data["iterations"] == 4
    q = data["compression"]["quantization"]
    assert q["weight_quantizers"] > 50 and q["activation_quantizers"] > 30
    assert "quantizers:" in qat_run["output"] and "range init on 2 batches" in qat_run["output"]
    ckpt = torch.load(data["checkpoint"], map_location="cpu", weights_only=True)
    meta = ckpt["meta"]["detcompress"]
    assert meta["compressed"] is True
    assert meta["nncf_config"]["compression"]["algorithm"] == "quantization"
    assert meta["structure"]["nncf"]["compression_state"]  # NNCF's get_config, in plain types
    assert "YOLOX" in meta["config_text"]
    assert {"torch", "mmdet", "mmengine", "detcompress"} <= set(meta["versions"])
    assert any("__nncf_hooks" in k for k in ckpt["state_dict"])
    assert {"optimizer", "param_schedulers", "message_hub"} <= set(ckpt)


def test_terminal_gets_a_short_report_and_the_log_file_everything(qat_run: dict) -> None:
    lines = qat_run["output"].splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    assert any("Iter(train) [4/4]" in line for line in lines)  # progress
    assert any("Iter(val)" in line and "bbox_mAP" in line for line in lines)  # validation
    assert lines[-1].startswith("bbox mAP")  # the summary
    assert not any(line.startswith(("Config:", "System environment")) for line in lines)
    (log,) = (qat_run["base"] / "qat").glob("*/*.log")
    text = log.read_text()
    assert "Config:" in text and "System environment" in text and "Iter(train) [4/4]" in text


def test_evaluating_compressed_checkpoint_reproduces_last_validation(qat_run: dict) -> None:
    result, again = _compress(
        qat_run["config"], qat_run["base"] / "eval", "--max-iters", "0", "--load-from",
        qat_run["data"]["checkpoint"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "compression rebuilt from" in result.output
    assert again["compressed"] is True
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75"):
        assert again[key] == pytest.approx(qat_run["data"][key], abs=1e-9)


def test_resume_continues_to_the_same_final_weights(qat_run: dict) -> None:
    first = qat_run["base"] / "qat"
    result = runner.invoke(
        app, ["resume", str(first / "iter_2.pth"), "--work-dir", str(qat_run["base"] / "resumed")]
    )
    assert result.exit_code == 0, result.output
    uninterrupted = torch.load(first / "iter_4.pth", map_location="cpu", weights_only=True)
    resumed = torch.load(
        qat_run["base"] / "resumed" / "iter_4.pth", map_location="cpu", weights_only=True
    )
    assert resumed["meta"]["iter"] == 4
    lr = [g["lr"] for g in uninterrupted["optimizer"]["param_groups"]]
    assert [g["lr"] for g in resumed["optimizer"]["param_groups"]] == lr
    a, b = uninterrupted["state_dict"], resumed["state_dict"]
    assert set(a) == set(b)
    for key in a:
        # Same data order and seeds: identical up to float summation order in threaded kernels.
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-6), key


def test_resume_refuses_to_overwrite_later_checkpoints(qat_run: dict) -> None:
    first = qat_run["base"] / "qat"
    before = (first / "iter_4.pth").stat().st_mtime_ns
    result = runner.invoke(app, ["resume", str(first / "iter_2.pth")])
    assert result.exit_code == 2
    assert "iterations after 2" in result.output and len(result.output.strip().splitlines()) == 1
    assert (first / "iter_4.pth").stat().st_mtime_ns == before


def test_compressed_checkpoint_with_other_nncf_config_is_refused(qat_run: dict) -> None:
    result, _ = _compress(
        qat_run["config"], qat_run["base"] / "other", "--preset", "int8_mixed", "--load-from",
        qat_run["data"]["checkpoint"], "--max-iters", "1",
    )  # fmt: skip
    assert result.exit_code == 2
    line = result.output.strip()
    assert "different nncf_config" in line and "compression.preset" in line
    assert "compression.activations.mode" in line and "--force" in line
    assert not (qat_run["base"] / "other").exists()


def _ptq_with(qat_run: dict, name: str, option: str) -> tuple[Any, dict]:
    """int8 PTQ of the FP32 checkpoint with one more --cfg-options entry."""
    return _compress(
        qat_run["config"], qat_run["base"] / name, "--preset", "int8", "--load-from",
        qat_run["fp32"], "--max-iters", "0", "--cfg-options", *FAST_INIT, option,
    )  # fmt: skip


def test_unmatched_ignored_scope_is_listed(qat_run: dict) -> None:
    result, data = _ptq_with(
        qat_run, "ignored",
        "nncf_config.compression.ignored_scopes=['{re}bbox_head/.*', 'backbone/nowhere/conv2d/0']",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ignored scope 'backbone/nowhere/conv2d/0' matched nothing" in result.output
    ignored = data["compression"]["quantization"]
    assert ignored["ignored_unmatched"] == ["backbone/nowhere/conv2d/0"]
    assert ignored["ignored_matched"]["{re}bbox_head/.*"] > 0
    full = qat_run["data"]["compression"]["quantization"]
    assert ignored["activation_quantizers"] < full["activation_quantizers"]


def test_target_scopes_limit_quantization_to_their_operations(qat_run: dict) -> None:
    result, data = _ptq_with(
        qat_run, "target",
        "nncf_config.compression.target_scopes=['{re}^bbox_head/', 'neck/nowhere']",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "target scope 'neck/nowhere' matched nothing" in result.output
    target = data["compression"]["quantization"]
    assert target["target_unmatched"] == ["neck/nowhere"]
    assert target["target_matched"]["{re}^bbox_head/"] > 0
    full = qat_run["data"]["compression"]["quantization"]
    # The head's convolutions only: 3 levels x (2 stacked convs x 2 branches + 3 outputs).
    assert target["weight_quantizers"] == 21 < full["weight_quantizers"]
    nothing, _ = _ptq_with(
        qat_run, "target_none", "nncf_config.compression.target_scopes=['neck/nowhere']"
    )
    assert nothing.exit_code == 2
    # One error line (after pycocotools' prints: the names are known once the model is traced).
    errors = [line for line in nothing.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "matched no operation" in errors[0]
    assert nothing.output.strip().splitlines()[-1] == errors[0]


def test_truncated_checkpoint_is_a_clear_error(qat_run: dict, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pth"
    cut.write_bytes(Path(qat_run["data"]["checkpoint"]).read_bytes()[:4096])
    result, _ = _compress(qat_run["config"], tmp_path / "w", "--load-from", str(cut))
    assert result.exit_code == 2
    assert "truncated or corrupt" in result.output and str(cut) in result.output
    assert not (tmp_path / "w").exists()


def test_compressed_checkpoint_reloads_bit_identically(qat_run: dict, tmp_path: Path) -> None:
    from mmengine.config import Config

    from detcompress import api
    from detcompress.model import detector
    from detcompress.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(qat_run["data"]["checkpoint"])
    meta = detector.detcompress_meta(ckpt)
    assert meta is not None
    cfg = Config.fromstring(meta["config_text"], file_format=".py")
    model = api.rebuild_compressed(detector.build_detector(cfg), meta, ckpt).eval()
    x = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        here = [t for level in model(x) for t in level]
    there = outputs_in_fresh_process(qat_run["data"]["checkpoint"], x, tmp_path)
    assert len(here) == len(there) > 0
    assert all(torch.equal(a, b) for a, b in zip(here, there, strict=True))


def test_checkpoint_of_the_previous_format_still_loads(qat_run: dict, tmp_path: Path) -> None:
    """Checkpoints written before pruning existed hold NNCF's structure directly."""
    from detcompress.model.checkpoint import load_checkpoint
    from detcompress.model.load import load_detector

    ckpt = load_checkpoint(qat_run["data"]["checkpoint"])
    meta = ckpt["meta"]["detcompress"]
    meta["structure"] = meta["structure"]["nncf"]
    assert "format" not in meta["structure"]
    old = tmp_path / "old.pth"
    torch.save(ckpt, old)
    x = torch.rand(1, 3, 96, 96) * 255
    with torch.no_grad():
        before = load_detector(Path(qat_run["data"]["checkpoint"])).model(x)
        after = load_detector(old).model(x)
    flat = [t for level in before for t in level], [t for level in after for t in level]
    assert all(torch.equal(a, b) for a, b in zip(*flat, strict=True))


def _quantizer_calls_per_mode(model: Any, batch: Any) -> dict[str, int]:
    from detcompress.compression.nncf_adapter import quantizer_modules

    calls = {"n": 0}
    unique = {id(m): m for _, m in quantizer_modules(model)}
    handles = [
        m.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        for m in unique.values()
    ]
    counts = {}
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        model(data["inputs"])
        counts["tensor"], calls["n"] = calls["n"], 0
        model(**data, mode="predict")
        counts["predict"], calls["n"] = calls["n"], 0
    model.train()
    model(**model.data_preprocessor(batch, True), mode="loss")
    counts["loss"] = calls["n"]
    for handle in handles:
        handle.remove()
    return counts


def test_fake_quantizers_act_in_loss_predict_and_tensor_modes(qat_run: dict) -> None:
    from mmengine.config import Config

    from detcompress import api
    from detcompress.model import detector
    from detcompress.model.checkpoint import load_checkpoint
    from detcompress.train.runner import calibration_batches

    ckpt = load_checkpoint(qat_run["data"]["checkpoint"])
    meta = detector.detcompress_meta(ckpt)
    assert meta is not None
    cfg = Config.fromstring(meta["config_text"], file_format=".py")
    batch = calibration_batches(cfg, 1)[0]
    model = api.rebuild_compressed(detector.build_detector(cfg), meta, ckpt)
    counts = _quantizer_calls_per_mode(model, batch)
    # Every quantizer of the traced graph runs in every mode (shared ones more than once).
    assert counts["tensor"] == counts["predict"] == counts["loss"]
    total = sum(
        len(c["hook_names_in_model"]) for c in meta["structure"]["nncf"]["compression_state"]
    )
    assert counts["tensor"] >= total > 0
    # And the reason for detcompress's head routing: without it, tensor mode misses the head's.
    plain = detector.build_detector(cfg)
    del plain._forward  # back to mmdet's own SingleStageDetector._forward
    unrouted = _quantizer_calls_per_mode(api.rebuild_compressed(plain, meta, ckpt), batch)
    assert unrouted["tensor"] < unrouted["loss"] == counts["loss"]


def test_training_speedups_change_no_result(qat_run: dict) -> None:
    """What training runs outside NNCF's operation tracing (hook modules, the head's loss and
    postprocessing) gives the same losses, gradients and predictions, and is undone."""
    from mmengine.config import Config

    from detcompress import api
    from detcompress.compression import speedups
    from detcompress.model import detector
    from detcompress.model.checkpoint import load_checkpoint
    from detcompress.train.runner import calibration_batches

    ckpt = load_checkpoint(qat_run["data"]["checkpoint"])
    meta = detector.detcompress_meta(ckpt)
    assert meta is not None
    cfg = Config.fromstring(meta["config_text"], file_format=".py")
    batch = calibration_batches(cfg, 1)[0]
    model = api.rebuild_compressed(detector.build_detector(cfg), meta, ckpt)
    # Training-mode forwards update batch-norm statistics: every run starts from the same ones.
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def run() -> tuple[list[torch.Tensor], dict[str, torch.Tensor], list[torch.Tensor]]:
        model.load_state_dict(start)
        model.zero_grad()
        model.train()
        losses = model(**model.data_preprocessor(batch, True), mode="loss")
        loss, _ = model.parse_losses(losses)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(batch, False)
            boxes = [s.pred_instances.bboxes for s in model(**data, mode="predict")]
        return boxes, {k: v.detach() for k, v in losses.items() if torch.is_tensor(v)}, grads

    def instance_methods() -> set[tuple[int, str]]:
        names = ("forward", "loss_by_feat", "predict_by_feat")
        return {(id(m), n) for m in model.modules() for n in names if n in vars(m)}

    def operation_names() -> list[str]:
        """Names NNCF gives the network's operations in a tensor-mode forward."""
        with nncf_operation_names() as names, torch.no_grad():
            model.eval()
            model(model.data_preprocessor(batch, False)["inputs"])
        return names

    traced = run()
    traced_names = operation_names()
    counts = _quantizer_calls_per_mode(model, batch)
    before = instance_methods()  # NNCF's own wrapper of the detector's forward
    retrace = speedups.speed_up_training(model)
    patched = instance_methods() - before
    # Each distinct quantizer's forward, and the head's loss and postprocessing.
    assert {n for _, n in patched} == {"forward", "loss_by_feat", "predict_by_feat"}
    assert len(patched) > counts["tensor"] // 2
    from nncf.torch.quantization import extensions

    kernels = extensions.QuantizedFunctionsCPU._loaded_namespace
    fused_calls = {"done": 0}
    symmetric = kernels.symmetric_fake_quantize

    def counted(*args: Any) -> Any:
        out = symmetric(*args)
        fused_calls["done"] += out is not None
        return out

    kernels.symmetric_fake_quantize = counted
    try:
        untraced = run()  # the first loss and predict forwards: recorded, in the hook mode
        at_boundaries = run()  # then every hook wrapped around its module, no hook mode
        forward = vars(model)["forward"]
        assert type(forward).__name__ == "_TrainingForward"
        assert dict(forward.forwards) == {"recorded": 2, "module hooks": 2}
        # The recording hook mode names every operation as NNCF's does.
        assert operation_names() == traced_names and len(traced_names) > 100
    finally:
        del kernels.symmetric_fake_quantize
    # The quantizers' fused path really ran: every quantizer in all forwards.
    expected_calls = 2 * (counts["loss"] + counts["predict"]) + counts["tensor"]
    assert fused_calls["done"] == expected_calls
    assert _quantizer_calls_per_mode(model, batch) == counts  # every quantizer still acts
    retrace()
    assert instance_methods() == before
    assert type(vars(model)["forward"]).__name__ == "ForwardWithHooks"  # NNCF's own again
    for other in (untraced, at_boundaries):
        assert all(torch.equal(a, b) for a, b in zip(traced[0], other[0], strict=True))
        assert traced[1].keys() == other[1].keys()
        assert all(torch.equal(traced[1][k], other[1][k]) for k in traced[1])
        assert len(traced[2]) == len(other[2]) > 0
        assert all(torch.equal(a, b) for a, b in zip(traced[2], other[2], strict=True))
