"""The synthetic demo dataset: valid COCO, deterministic for a seed, varied enough to learn."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detcompress.cli import app
from detcompress.demo.workspace import CLASSES, DemoSpec, write_dataset

SPEC = DemoSpec(image_size=96, train_images=30, val_images=10, max_object_size=40)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo_data")
    write_dataset(root, seed=3, spec=SPEC)
    return root


def test_dataset_is_valid_coco(dataset: Path) -> None:
    from pycocotools.coco import COCO

    for split, n in (("train", SPEC.train_images), ("val", SPEC.val_images)):
        coco = COCO(str(dataset / "annotations" / f"{split}.json"))
        assert len(coco.getImgIds()) == n
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        for img in coco.loadImgs(coco.getImgIds()):
            assert (dataset / split / img["file_name"]).is_file()
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= SPEC.max_objects
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert x >= 0 and y >= 0 and w > 0 and h > 0
                assert x + w <= img["width"] and y + h <= img["height"]
                assert 0 < ann["area"] <= w * h


def test_dataset_has_classes_scales_and_occlusion(dataset: Path) -> None:
    coco = json.loads((dataset / "annotations" / "train.json").read_text())
    anns = coco["annotations"]
    assert {a["category_id"] for a in anns} == {1, 2, 3}
    sizes = [max(a["bbox"][2:]) for a in anns]
    assert min(sizes) < 24 and max(sizes) > 32  # scale variety
    per_image = np.bincount([a["image_id"] for a in anns])
    assert per_image.max() >= 4  # several objects per image

    def overlap(a: list[float], b: list[float]) -> bool:
        return (
            a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
        )

    by_image: dict[int, list[list[float]]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    overlapping = sum(
        any(overlap(b1, b2) for i, b1 in enumerate(boxes) for b2 in boxes[i + 1 :])
        for boxes in by_image.values()
    )
    assert overlapping >= 3  # objects partly occlude each other


def test_dataset_is_deterministic_for_a_seed(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_dataset(again, seed=3, spec=SPEC)
    assert _digest(again) == _digest(dataset)
    other = tmp_path / "other"
    write_dataset(other, seed=4, spec=SPEC)
    assert _digest(other) != _digest(dataset)


def test_init_demo_workspace_and_no_overwrite(tiny_workspace: Path) -> None:
    assert (tiny_workspace / "configs" / "demo.py").is_file()
    assert {p.stem for p in (tiny_workspace / "presets").glob("*.yaml")} >= {
        "int8",
        "filter_pruning",
    }
    assert "detcompress compress" in (tiny_workspace / "README.md").read_text()
    before = _digest(tiny_workspace)
    result = CliRunner().invoke(app, ["init", "demo", str(tiny_workspace)])
    assert result.exit_code == 2
    assert "--force" in result.output and len(result.output.strip().splitlines()) == 1
    assert _digest(tiny_workspace) == before  # nothing touched
