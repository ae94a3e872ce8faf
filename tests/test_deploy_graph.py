"""Box decoding and NMS inside the exported graph vs mmdet's own `predict_by_feat`, for every
head kind export supports, on random head outputs spread widely enough that ties are rare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from detcompress.deploy import DECODED_OUTPUTS

pytestmark = pytest.mark.slow

SIZE = 128
HEADS = {
    "yolox": "yolox/yolox_tiny_8xb8-300e_coco.py",
    "ssdlite": "ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py",
    "retinanet": "retinanet/retinanet_r18_fpn_1x_coco.py",
    "atss": "atss/atss_r50_fpn_1x_coco.py",  # centerness multiplies the scores
    "fcos": "fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py",  # points, distances, centerness
    "yolov3": "yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py",  # one map: box, objectness, class
    "rtmdet": "rtmdet/rtmdet_tiny_8xb32-300e_coco.py",  # points and distances, no centerness
}


class _FixedHeadOutputs(nn.Module):
    """A 'detector' whose tensor-mode forward returns prescribed head outputs."""

    def __init__(self, head: nn.Module, outs: list[list[torch.Tensor]]) -> None:
        super().__init__()
        self.bbox_head = head
        self.outs = outs

    def forward(self, x: torch.Tensor, mode: str = "tensor") -> Any:
        zero = x.mean() * 0  # keeps the input in the traced graph
        return tuple([t + zero for t in group] for group in self.outs)


class _SizedHeadOutputs(nn.Module):
    """A 'detector' whose head outputs are cut from prescribed larger maps to the input's size
    (each level: the input size over its stride, rounded up), for a dynamic-size export."""

    def __init__(self, head: nn.Module, outs: list[list[torch.Tensor]]) -> None:
        super().__init__()
        self.bbox_head = head
        self.outs = outs
        self.strides = _strides(head)

    def forward(self, x: torch.Tensor, mode: str = "tensor") -> Any:
        zero = x.mean() * 0
        height, width = x.shape[2], x.shape[3]
        return tuple(
            [
                t[:, :, : (height + s - 1) // s, : (width + s - 1) // s] + zero
                for t, s in zip(group, self.strides, strict=True)
            ]
            for group in self.outs
        )


def _strides(head: Any) -> list[int]:
    return [s[0] if isinstance(s, tuple | list) else s for s in head.prior_generator.strides]


def _head(base: str, tmp_path: Path) -> nn.Module:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from detcompress.patches import apply_mmdet_workarounds

    register_all_modules()
    apply_mmdet_workarounds()
    config = tmp_path / "c.py"
    config.write_text(f"_base_ = 'mmdet::{base}'\nmodel = dict(bbox_head=dict(num_classes=3))\n")
    cfg = Config.fromfile(config)
    head_cfg = cfg.model.bbox_head
    head_cfg.update(train_cfg=cfg.model.get("train_cfg"), test_cfg=cfg.model.get("test_cfg"))
    if base.startswith("ssd/ssdlite"):  # ssdlite's priors are laid out for 320 px
        head_cfg.anchor_generator.update(strides=[8, 16, 32, 64, 128, 256][:6])
    return MODELS.build(head_cfg).eval()


def _random_outputs(
    head: Any, batch: int, size: tuple[int, int] = (SIZE, SIZE)
) -> list[list[torch.Tensor]]:
    """Per level, what the head's forward would return for inputs of `size` (h, w), with widely
    spread values."""
    generator = torch.Generator().manual_seed(0)
    sizes = [(max(1, -(-size[0] // s)), max(1, -(-size[1] // s))) for s in _strides(head)]
    priors = getattr(head, "num_base_priors", 1)
    per_level = priors if isinstance(priors, list) else [priors] * len(sizes)

    def randn(channels: int, hw: tuple[int, int]) -> torch.Tensor:
        return torch.randn(batch, channels, *hw, generator=generator)

    kind = type(head).__name__
    if kind == "YOLOV3Head":  # per anchor: x, y, w, h, objectness, classes
        maps = []
        for p, hw in zip(per_level, sizes, strict=True):
            level = randn(p * head.num_attrib, hw).reshape(batch, p, head.num_attrib, *hw)
            level[:, :, 2:4] = level[:, :, 2:4] * 0.2 - 2.0  # boxes within the image (see below)
            maps.append(level.reshape(batch, -1, *hw))
        return [maps]
    classes = [randn(head.cls_out_channels * p, hw) for p, hw in zip(per_level, sizes, strict=True)]
    # Small box deltas: mmdet's class-aware NMS offsets boxes by class * (max coordinate + 1), so
    # boxes reaching far below 0 can suppress boxes of the next class (a quirk the graph's
    # per-class NMS does not have); trained models rarely predict such boxes.
    boxes = [randn(4 * p, hw) * 0.2 for p, hw in zip(per_level, sizes, strict=True)]
    if kind in ("FCOSHead", "RTMDetHead", "RTMDetSepBNHead"):  # distances in pixels
        boxes = [(b * 5).exp() * 4 for b in boxes]
    groups = [classes, boxes]
    if kind in ("YOLOXHead", "ATSSHead", "FCOSHead"):  # objectness / centerness per prior
        groups.append([randn(p, hw) for p, hw in zip(per_level, sizes, strict=True)])
    return groups


def _mmdet_detections(
    head: Any, outs: list[list[torch.Tensor]], limit: int, size: tuple[int, int] = (SIZE, SIZE)
) -> list[np.ndarray]:
    metas = [dict(img_shape=size, scale_factor=(1.0, 1.0))] * outs[0][0].shape[0]
    with torch.no_grad():
        results = head.predict_by_feat(*outs, batch_img_metas=metas, rescale=False)
    return [
        np.concatenate(
            [r.labels.float().numpy()[:, None], r.scores.numpy()[:, None], r.bboxes.numpy()], 1
        )[: limit if limit > 0 else None]
        for r in results
    ]


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
@pytest.mark.parametrize("kind", sorted(HEADS))
def test_graph_detections_match_mmdet(kind: str, fmt: str, tmp_path: Path) -> None:
    from detcompress.deploy import onnx_backend, openvino_backend
    from detcompress.deploy.graph import DeployableDetector, Preprocessing

    head = _head(HEADS[kind], tmp_path)
    batch = 2
    outs = _random_outputs(head, batch)
    prep = Preprocessing(SIZE, SIZE, [0.0] * 3, [1.0] * 3, False, 0.0, 1, None, False)
    graph = DeployableDetector(_FixedHeadOutputs(head, outs), prep, decode_boxes=True).eval()
    params = graph.nms
    assert params is not None
    example = torch.zeros(batch, 3, SIZE, SIZE)
    with torch.no_grad():
        if fmt == "openvino":
            model = openvino_backend.append_nms(
                openvino_backend.convert(graph, example, batch, DECODED_OUTPUTS),
                params,
                model_api_outputs=False,
            )
            xml = tmp_path / "m.xml"
            openvino_backend.save(model, xml, {}, fp16_weights=False, model_info=None)
            compiled = openvino_backend.compile_model(xml, f32=True)
            detections = openvino_backend.infer(compiled, example.numpy())[0]
        else:
            path = tmp_path / "m.onnx"
            onnx_backend.export(graph, example, path, DECODED_OUTPUTS, dynamic_batch=False)
            onnx_backend.append_nms(path, params, model_api_outputs=False)
            detections = onnx_backend.infer(onnx_backend.session(path), example.numpy())[0]
    _assert_matches_mmdet(detections, _mmdet_detections(head, outs, params.max_per_image), params)


@pytest.mark.parametrize("kind", ["retinanet", "fcos", "yolov3", "yolox"])
def test_dynamic_size_graph_detections_match_mmdet_at_another_size(
    kind: str, tmp_path: Path
) -> None:
    """Exported with a dynamic shape at SIZE x SIZE, run at a taller, narrower input: the priors
    (anchors, points, YOLOv3's per-anchor strides), clipping and nms_pre follow the input."""
    from detcompress.deploy import openvino_backend
    from detcompress.deploy.graph import DeployableDetector, Preprocessing

    head = _head(HEADS[kind], tmp_path)
    batch, other = 2, (SIZE + 64, SIZE - 32)
    outs = _random_outputs(head, batch, (SIZE + 64, SIZE))  # cut to each input's size
    prep = Preprocessing(SIZE, SIZE, [0.0] * 3, [1.0] * 3, False, 0.0, 1, None, False)
    graph = DeployableDetector(_SizedHeadOutputs(head, outs), prep, decode_boxes=True).eval()
    params = graph.nms
    assert params is not None
    example, image = torch.zeros(batch, 3, SIZE, SIZE), torch.zeros(batch, 3, *other)
    with torch.no_grad():
        model = openvino_backend.convert(graph, example, None, DECODED_OUTPUTS, dynamic_size=True)
        model = openvino_backend.append_nms(model, params, model_api_outputs=False)
        xml = tmp_path / "m.xml"
        openvino_backend.save(model, xml, {}, fp16_weights=False, model_info=None)
        compiled = openvino_backend.compile_model(xml, f32=True)
        detections = openvino_backend.infer(compiled, image.numpy())[0]
        at_other_size = graph.detector(image)  # the head outputs for that input
    expected = _mmdet_detections(head, list(at_other_size), params.max_per_image, other)
    _assert_matches_mmdet(detections, expected, params)


def _assert_matches_mmdet(detections: np.ndarray, expected: list[np.ndarray], params: Any) -> None:
    """The graph's detections [K, 7] vs mmdet's per image."""
    for index, theirs in enumerate(expected):
        mine = detections[detections[:, 0] == index][:, 1:]
        assert len(mine) == len(theirs) > 20
        # Same detections, same order, except where two scores are within float rounding (a
        # tie: which box NMS keeps, or which makes the cut, may differ) or at the cut itself.
        cutoff = theirs[-1, 1] if len(theirs) == params.max_per_image else -1.0
        compared = 0
        for these, others in ((theirs, mine), (mine, theirs)):
            for row in these:
                close = np.abs(these[:, 1] - row[1]) < 1e-5
                if row[1] <= cutoff + 1e-5 or close.sum() > 1:
                    continue
                twin = others[np.abs(others[:, 1] - row[1]) < 1e-5]
                assert len(twin) == 1 and twin[0, 0] == row[0], (row, twin)
                np.testing.assert_allclose(twin[0, 2:], row[2:], atol=1e-3)
                compared += 1
        assert compared > len(theirs)  # most of both sides were compared
        np.testing.assert_array_equal(mine[:, 1], np.sort(mine[:, 1])[::-1])  # sorted by score


def _faster_rcnn(tmp_path: Path) -> Any:
    """The stock Faster R-CNN (shrunk as in the stock-config test), random weights."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from detcompress.demo.stock import FAMILIES, write_config
    from detcompress.patches import apply_mmdet_workarounds

    register_all_modules()
    apply_mmdet_workarounds()
    config = write_config(FAMILIES["faster_rcnn"], tmp_path, tmp_path / "c.py", small=True)
    torch.manual_seed(0)
    return MODELS.build(Config.fromfile(config).model).eval()


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_two_stage_graph_detections_match_mmdet(fmt: str, tmp_path: Path) -> None:
    """Faster R-CNN whole inside the graph (RPN proposals and their NMS per level, RoIAlign on
    the mapped level, the RoI head, per-class decoding, NMS) vs mmdet's predict mode."""
    from mmdet.structures import DetDataSample

    from detcompress.deploy import onnx_backend, openvino_backend
    from detcompress.deploy.graph import DeployableDetector, Preprocessing, normalize

    detector = _faster_rcnn(tmp_path)
    # RoIs of 16-128 px spread over all four levels (the stock 56 keeps them on one at 128 px).
    detector.roi_head.bbox_roi_extractor.finest_scale = 16
    with torch.no_grad():  # scores spread widely (random weights give all ~1/4): few near-ties
        detector.roi_head.bbox_head.fc_cls.weight *= 30
    batch = 2
    prep = Preprocessing(SIZE, SIZE, [100.0] * 3, [50.0] * 3, True, 0.0, 32, None, False)
    graph = DeployableDetector(detector, prep, decode_boxes=True).eval()
    params = graph.nms
    assert params is not None and graph.head_name == "RPNHead+Shared2FCBBoxHead"
    images = torch.randint(
        0, 256, (batch, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0)
    )
    example = images.float()
    path = tmp_path / "m.onnx"
    with torch.no_grad():
        onnx_backend.export(graph, example, path, DECODED_OUTPUTS, dynamic_batch=False)
    operations = onnx_backend.operation_counts(path)
    assert operations["NonMaxSuppression"] == 1 and operations["RoiAlign"] == 4  # 4 FPN levels
    if fmt == "openvino":
        model = openvino_backend.convert_onnx(path, DECODED_OUTPUTS)
        model = openvino_backend.append_nms(model, params, model_api_outputs=False)
        xml = tmp_path / "m.xml"
        openvino_backend.save(model, xml, {}, fp16_weights=False, model_info=None)
        compiled = openvino_backend.compile_model(xml, f32=True)
        detections = openvino_backend.infer(compiled, example.numpy())[0]
        kinds = [op.get_type_name() for op in model.get_ordered_ops()]
        assert kinds.count("ROIAlign") == 4 and kinds.count("NonMaxSuppression") == 2
    else:
        onnx_backend.append_nms(path, params, model_api_outputs=False)
        detections = onnx_backend.infer(onnx_backend.session(path), example.numpy())[0]
    shape = (SIZE, SIZE)
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, scale_factor=(1.0, 1.0))
    samples = [DetDataSample(metainfo={**meta, "batch_input_shape": shape}) for _ in range(batch)]
    with torch.no_grad():
        results = detector.predict(normalize(prep, example), samples, rescale=False)
    expected = [
        np.concatenate(
            [r.labels.float().numpy()[:, None], r.scores.numpy()[:, None], r.bboxes.numpy()], 1
        )
        for r in (sample.pred_instances for sample in results)
    ]
    _assert_matches_mmdet(detections, expected, params)


class _PoolThenConv(nn.Module):
    """conv -> ReLU -> FakeQuantize -> MaxPool(ceil_mode) -> conv with fake-quantized weights:
    the int8 pattern of SSD's VGG16 between its stages, at an odd size where ceil and floor
    rounding differ (75 -> 38)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.second = nn.Conv2d(16, 32, 3, padding=1)
        self.weight_scale = float(self.second.weight.abs().max()) / 127

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x))
        x = torch.fake_quantize_per_tensor_affine(x, 4.0 / 255, 0, 0, 255)
        x = self.pool(x)
        weight = torch.fake_quantize_per_tensor_affine(
            self.second.weight, self.weight_scale, 0, -128, 127
        )
        return nn.functional.conv2d(x, weight, self.second.bias, padding=1)


def test_ceil_mode_max_pool_is_rewritten_so_the_next_convolution_runs_int8() -> None:
    """OpenVINO's int8 path does not pass through a ceil-rounded MaxPool (SSD300 ran 4 of its
    35 convolutions in float after one): export rewrites it as floor rounding over explicit end
    padding, the same values, and the convolution after it runs in int8."""
    import openvino as ov

    from detcompress.deploy import openvino_backend

    module = _PoolThenConv().eval()
    x = torch.rand(1, 3, 75, 75) * 4
    with torch.no_grad():
        expected = module(x).numpy()
    as_converted = ov.convert_model(module, example_input=x)
    model = openvino_backend.convert(module, x, 1, ["out"])

    def pools(m: ov.Model) -> list[str]:
        return [str(op.get_attributes()["rounding_type"]) for op in m.get_ordered_ops()
                if op.get_type_name() == "MaxPool"]  # fmt: skip

    assert pools(as_converted) == ["ceil_torch"] and pools(model) == ["floor"]
    core = openvino_backend.core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    before = core.compile_model(as_converted, "CPU", f32)
    after = core.compile_model(model, "CPU", f32)
    assert openvino_backend.int8_convolutions(before) == (0, 2)  # the problem, still upstream
    assert openvino_backend.int8_convolutions(after) == (1, 2)  # the first conv's input is float
    got = after(x.numpy())[0]
    assert got.shape == expected.shape == (1, 32, 38, 38)
    # Same windows: only int8 arithmetic (integer accumulation) differs from PyTorch's.
    assert np.abs(got - before(x.numpy())[0]).max() <= 1e-3 * np.abs(expected).max()


class _FocusStem(nn.Module):
    """YOLOX's Focus stem on a fake-quantized image: four strided slices, a Concat, a conv."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(12, 16, 3, padding=1)
        self.weight_scale = float(self.conv.weight.abs().max()) / 127

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.fake_quantize_per_tensor_affine(x, 2.0 / 255, 128, 0, 255)
        corners = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
        x = torch.cat(corners, 1)
        weight = torch.fake_quantize_per_tensor_affine(
            self.conv.weight, self.weight_scale, 0, -128, 127
        )
        return nn.functional.conv2d(x, weight, self.conv.bias, padding=1)


def test_image_quantizer_moves_after_the_focus_slices() -> None:
    """The image's FakeQuantize, placed before the Focus slices by NNCF, moves after their
    Concat at export: the slices run in float instead of a reference int8 kernel, the
    convolution stays int8, and the values are those of the graph as converted."""
    import openvino as ov

    from detcompress.deploy import openvino_backend

    module = _FocusStem().eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    as_converted = ov.convert_model(module, example_input=x)
    model = openvino_backend.convert(module, x, 1, ["out"])

    def fed_by_quantizer(m: ov.Model) -> list[str]:
        return sorted(t.get_node().get_type_name() for op in m.get_ordered_ops()
                      if op.get_type_name() == "FakeQuantize"
                      and op.input_value(0).get_node().get_type_name() != "Constant"
                      for t in op.output(0).get_target_inputs())  # fmt: skip

    assert set(fed_by_quantizer(as_converted)) == {"Slice"}
    assert fed_by_quantizer(model) == ["Convolution"]
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    before = openvino_backend.core().compile_model(as_converted, "CPU", f32)
    after = openvino_backend.core().compile_model(model, "CPU", f32)
    assert openvino_backend.int8_convolutions(after) == (1, 1)
    slices = {
        precision for (kind, precision) in openvino_backend.runtime_precisions(after)
        if kind == "StridedSlice"
    }  # fmt: skip
    assert slices and not slices & openvino_backend.INT8_PRECISIONS
    np.testing.assert_allclose(after(x.numpy())[0], before(x.numpy())[0], rtol=0, atol=1e-4)


def _per_channel_int8(weight: torch.Tensor) -> torch.Tensor:
    scale = weight.detach().abs().amax(dim=(1, 2, 3)) / 127
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -128, 127)


class _ScaledSharedConvAndDeadBranch(nn.Module):
    """Two int8 patterns that conversion leaves in a form the CPU plugin runs in float: FCOS's
    box convolution, shared by two levels each with its own learned `Scale` after it, and a
    convolution whose batch norm has all-zero gamma (a frozen ResNet stage's residual branch
    with mmdet's zero-initialised last norm)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.box = nn.Conv2d(16, 4, 3, padding=1)
        self.scales = nn.Parameter(torch.tensor([1.5, 0.7]))
        self.dead = nn.Conv2d(16, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        nn.init.zeros_(self.norm.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.fake_quantize_per_tensor_affine(x, 2.0 / 255, 128, 0, 255)
        x = torch.relu(nn.functional.conv2d(x, _per_channel_int8(self.stem.weight), padding=1))
        x = torch.fake_quantize_per_tensor_affine(x, 4.0 / 255, 0, 0, 255)
        levels = (x, x[..., ::2, ::2])
        boxes = [
            nn.functional.conv2d(level, _per_channel_int8(self.box.weight), self.box.bias, 1, 1)
            * scale
            for level, scale in zip(levels, self.scales, strict=True)
        ]
        dead = nn.functional.conv2d(x, _per_channel_int8(self.dead.weight), self.dead.bias, 1, 1)
        return boxes[0], boxes[1], self.norm(dead) + 1


def test_scaled_and_all_zero_int8_weights_are_rewritten_so_their_convolutions_run_int8() -> None:
    """Export gives each int8 convolution its own integer weights with one per-channel scale:
    conversion leaves a shared, twice-scaled form (FCOS: 5 box convolutions) and an unsigned
    all-zero form (ResNet families: the frozen stages' residual branches), both run in float.
    After the rewrite every convolution runs int8, with the values of the graph as converted."""
    import openvino as ov

    from detcompress.deploy import openvino_backend

    module = _ScaledSharedConvAndDeadBranch().eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    as_converted = ov.convert_model(module, example_input=x)
    model = openvino_backend.convert(module, x, 1, ["a", "b", "c"])
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    before = openvino_backend.core().compile_model(as_converted, "CPU", f32)
    after = openvino_backend.core().compile_model(model, "CPU", f32)
    assert openvino_backend.int8_convolutions(before) == (1, 4)  # the problem, still upstream
    assert openvino_backend.int8_convolutions(after) == (4, 4)
    got, expected = list(after(x.numpy()).values()), list(before(x.numpy()).values())
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())
    assert np.all(got[2] == 1)  # the dead branch: exactly zero, plus one
