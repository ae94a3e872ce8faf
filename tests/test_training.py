"""FP32 fine-tuning through mmengine's Runner, end to end on the real stack (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detcompress.cli import app

runner = CliRunner()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp32_run(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work_dir = tmp_path_factory.mktemp("fp32") / "work"
    out = work_dir.parent / "result.json"
    result = runner.invoke(
        app,
        [
            "compress",
            str(tiny_workspace / "configs" / "demo.py"),
            "--work-dir",
            str(work_dir),
            "--max-iters",
            "4",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return {"work_dir": work_dir, "json": json.loads(out.read_text()), "output": result.output}


def test_fine_tuning_writes_checkpoint_and_metric(fp32_run: dict) -> None:
    data = fp32_run["json"]
    assert data["iterations"] == 4
    assert data["compressed"] is False
    assert 0.0 <= data["bbox_mAP"] <= 1.0
    assert {"bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s"} <= set(data)
    ckpt = Path(data["checkpoint"])
    assert ckpt == fp32_run["work_dir"] / "iter_4.pth"
    assert "bbox mAP:" in fp32_run["output"]


def test_checkpoint_loads_with_weights_only_and_describes_itself(fp32_run: dict) -> None:
    ckpt = torch.load(fp32_run["json"]["checkpoint"], map_location="cpu", weights_only=True)
    meta = ckpt["meta"]["detcompress"]
    assert meta["compressed"] is False
    assert meta["nncf_config"] == {}
    assert "YOLOX" in meta["config_text"]
    assert set(meta["versions"]) >= {"detcompress", "torch", "mmdet", "mmengine"}
    assert {"state_dict", "optimizer", "param_schedulers", "message_hub"} <= set(ckpt)


def test_evaluating_the_checkpoint_reproduces_the_final_metric(
    fp32_run: dict, tiny_workspace: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        [
            "compress",
            str(tiny_workspace / "configs" / "demo.py"),
            "--work-dir",
            str(tmp_path / "w"),
            "--max-iters",
            "0",
            "--load-from",
            fp32_run["json"]["checkpoint"],
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    again = json.loads(out.read_text())
    assert again["bbox_mAP"] == pytest.approx(fp32_run["json"]["bbox_mAP"], abs=1e-9)
    assert again["bbox_mAP_50"] == pytest.approx(fp32_run["json"]["bbox_mAP_50"], abs=1e-9)


def test_work_dir_with_checkpoints_is_not_overwritten(fp32_run: dict, tiny_workspace: Path) -> None:
    work_dir = fp32_run["work_dir"]
    before = {p.name: p.stat().st_mtime_ns for p in work_dir.glob("*.pth")}
    result = runner.invoke(
        app,
        [
            "compress",
            str(tiny_workspace / "configs" / "demo.py"),
            "--work-dir",
            str(work_dir),
            "--max-iters",
            "1",
        ],
    )
    assert result.exit_code == 2
    assert "holds checkpoints of an earlier run" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in work_dir.glob("*.pth")} == before


def test_missing_dataset_path_names_the_key(tiny_workspace: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "compress",
            str(tiny_workspace / "configs" / "demo.py"),
            "--work-dir",
            str(tmp_path / "w"),
            "--max-iters",
            "1",
            "--cfg-options",
            "train_dataloader.dataset.ann_file=annotations/nope.json",
        ],
    )
    assert result.exit_code == 2
    line = result.output.strip()
    assert "'train_dataloader.dataset.ann_file'" in line and "nope.json" in line
    assert "does not exist" in line and len(line.splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_compress_without_nncf_config_never_imports_nncf(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    code = (
        "import sys\n"
        "from detcompress.cli import main\n"
        "sys.argv = ['detcompress', 'compress', sys.argv[1], '--work-dir', sys.argv[2],"
        " '--max-iters', '1']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('NNCF_IMPORTED' if 'nncf' in sys.modules else 'NNCF_NOT_IMPORTED')\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tiny_workspace / "configs" / "demo.py"),
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "NNCF_NOT_IMPORTED"


def test_stock_ssdlite_config_fine_tunes(tiny_workspace: Path, tmp_path: Path) -> None:
    data = tiny_workspace / "data"
    config = tmp_path / "ssdlite_demo.py"
    config.write_text(
        "_base_ = 'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py'\n"
        f"data_root = '{data}/'\n"
        "metainfo = dict(classes=('circle', 'square', 'triangle'))\n"
        "model = dict(bbox_head=dict(num_classes=3))\n"
        "train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,\n"
        "    dataset=dict(times=1, dataset=dict(data_root=data_root, metainfo=metainfo,\n"
        "        ann_file='annotations/train.json', data_prefix=dict(img='train/'))))\n"
        "val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,\n"
        "    dataset=dict(data_root=data_root, metainfo=metainfo,\n"
        "        ann_file='annotations/val.json', data_prefix=dict(img='val/')))\n"
        "test_dataloader = val_dataloader\n"
        "val_evaluator = dict(ann_file=data_root + 'annotations/val.json')\n"
        "test_evaluator = val_evaluator\n"
    )
    out = tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "compress",
            str(config),
            "--work-dir",
            str(tmp_path / "w"),
            "--max-iters",
            "2",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data_out = json.loads(out.read_text())
    assert data_out["iterations"] == 2 and 0.0 <= data_out["bbox_mAP"] <= 1.0
    assert Path(data_out["checkpoint"]).is_file()
