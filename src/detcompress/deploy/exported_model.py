"""An exported model (OpenVINO IR or ONNX) as an mmengine model, so that mmengine's test loop and
mmdet's evaluator see it exactly as they see a PyTorch detector: same dataloader, same metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.structures import InstanceData

from detcompress.deploy.graph import Preprocessing, pad_batch, size_to_fit
from detcompress.errors import DetcompressError


def runtime(
    path: Path, device: str, f32: bool
) -> tuple[Callable[[np.ndarray], list[np.ndarray]], str, str]:
    """(inference function, backend name, the floating-point precision it runs in)."""
    if path.suffix == ".xml":
        from detcompress.deploy import openvino_backend

        compiled = openvino_backend.compile_model(path, device, f32=f32)
        precision = openvino_backend.inference_precision(compiled)
        return lambda x: openvino_backend.infer(compiled, x), "openvino", precision
    from detcompress.deploy import onnx_backend

    session = onnx_backend.session(path)
    return lambda x: onnx_backend.infer(session, x), "onnxruntime", "f32"


class ExportedDetector(BaseModel):
    """`predict` mode only: pads the pipeline's images to the model's input, runs the runtime in
    batches of the model's size, and turns its outputs into mmdet's `pred_instances` (the graph's
    own detections, or mmdet's `predict_by_feat` on raw head outputs)."""

    def __init__(
        self,
        infer: Callable[[np.ndarray], list[np.ndarray]],
        metadata: dict[str, Any],
        head: Any | None,
    ) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.infer = infer
        self.prep = Preprocessing(**metadata["preprocessing"])
        self.batch = int(metadata["input"]["shape"][0])  # -1: dynamic
        # --dynamic-shape: images larger than the export size are padded to what they need.
        self.dynamic_size = -1 in metadata["input"]["shape"][1:]
        self.postprocessing = bool(metadata["postprocessing"])
        # mmdet clips most heads' boxes to the image (not the padded input); not YOLOX's and
        # YOLOv3's. (Exports before "clip_boxes" was written: all but YOLOX's.)
        self.clip = bool(metadata.get("clip_boxes", metadata.get("head") != "YOLOXHead"))
        self.groups: list[str] = metadata["output_groups"]["names"]
        self.levels: list[int] = metadata["output_groups"]["levels"]
        self.head = head
        self.seconds = 0.0
        self.images = 0

    def forward(self, inputs: Any, data_samples: Any = None, mode: str = "predict") -> Any:
        if mode != "predict":
            raise DetcompressError(f"an exported model only predicts (asked for mode '{mode}')")
        start = time.perf_counter()
        prep = size_to_fit(self.prep, list(inputs)) if self.dynamic_size else self.prep
        images = pad_batch(list(inputs), prep).numpy()
        chunk = len(images) if self.batch < 0 else self.batch
        parts = []
        for begin in range(0, len(images), chunk):
            part = images[begin : begin + chunk]
            real = len(part)
            if real < chunk:  # a static batch: fill with padding, drop those outputs
                filler = np.full((chunk - real, *part.shape[1:]), prep.pad_value, np.float32)
                part = np.concatenate([part, filler])
            parts.append((begin, real, self.infer(part)))
        # As mmdet's DetDataPreprocessor does: ground-truth boxes as tensors (its visualizer and
        # metrics expect them so).
        from mmdet.models.utils import samplelist_boxtype2tensor

        samplelist_boxtype2tensor(data_samples)
        metas = [sample.metainfo for sample in data_samples]
        if self.postprocessing:
            results = self._from_detections(parts, metas)
        else:
            results = self._from_raw(parts, metas)
        for sample, result in zip(data_samples, results, strict=True):
            sample.pred_instances = result
        self.seconds += time.perf_counter() - start
        self.images += len(images)
        return data_samples

    def _from_detections(self, parts: list[Any], metas: list[dict]) -> list[InstanceData]:
        results = []
        for begin, real, outputs in parts:
            detections = outputs[0]
            for index in range(real):
                mine = detections[detections[:, 0] == index]
                meta = metas[begin + index]
                boxes = torch.from_numpy(mine[:, 3:7].copy())
                if self.clip:
                    h, w = meta["img_shape"][:2]
                    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
                    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
                scale = boxes.new_tensor(meta.get("scale_factor", (1.0, 1.0))).repeat(2)
                results.append(
                    InstanceData(
                        bboxes=boxes / scale,
                        scores=torch.from_numpy(mine[:, 2].copy()),
                        labels=torch.from_numpy(mine[:, 1].astype(np.int64)),
                    )
                )
        return results

    def _from_raw(self, parts: list[Any], metas: list[dict]) -> list[InstanceData]:
        assert self.head is not None
        results: list[InstanceData] = []
        for begin, real, outputs in parts:
            grouped: dict[str, list[torch.Tensor]] = {}
            position = 0
            for name, levels in zip(self.groups, self.levels, strict=True):
                grouped[name] = [
                    torch.from_numpy(o[:real]) for o in outputs[position : position + levels]
                ]
                position += levels
            with torch.no_grad():
                results += self.head.predict_by_feat(
                    **grouped, batch_img_metas=metas[begin : begin + real], rescale=True
                )
        return results
