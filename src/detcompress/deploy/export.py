"""checkpoint -> OpenVINO IR and/or ONNX, FP32 or int8, with or without postprocessing inside,
self-describing, verified against the PyTorch model (`verify.py`) before the output folder
appears."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from detcompress import console
from detcompress.deploy import (
    DECODED_OUTPUTS,
    DETECTION_COLUMNS,
    DETECTIONS_OUTPUT,
    INPUT_FORMATS,
    INPUT_NAME,
    MODEL_API_OUTPUTS,
)
from detcompress.deploy.graph import (
    UNCLIPPED_HEADS,
    DeployableDetector,
    NMSParams,
    Preprocessing,
    normalize,
    preprocessing_of,
)
from detcompress.deploy.two_stage import is_two_stage
from detcompress.deploy.verify import (
    DETECTION_SCORE_MARGIN,
    MIN_DETECTIONS_COMPARED,
    int8_saturation_hint,
    pytorch_reference,
    repeat_to,
    verification_batch,
    verify_export,
)
from detcompress.errors import DetcompressError, OutputExistsError
from detcompress.files import atomic_dir, check_output_dir
from detcompress.model.load import LoadedDetector, load_detector, sha256_of

FORMATS = {"openvino": "model.xml", "onnx": "model.onnx"}
METADATA_FILE = "model.json"
METADATA_VERSION = 1


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]
    metadata: dict[str, Any]
    verification: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"exported {self.metadata['precision']} model to {self.out_dir}:"]
        for fmt, path in self.files.items():
            lines.append(f"  {fmt}: {path.name} ({model_size(path) / 1e6:.2f} MB)")
        for fmt, check in self.verification.items():
            lines.append(f"  verified {fmt}: {check['summary']}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "files": {k: str(v) for k, v in self.files.items()},
            "precision": self.metadata["precision"],
            "postprocessing": self.metadata["postprocessing"],
            "input_shape": self.metadata["input"]["shape"],
            "verification": {
                fmt: {k: v for k, v in check.items() if k != "summary"}
                for fmt, check in self.verification.items()
            },
        }


def model_size(path: Path) -> int:
    """Bytes on disk of a model file, with an IR's .bin."""
    size = path.stat().st_size
    weights = path.with_suffix(".bin")
    return size + (weights.stat().st_size if path.suffix == ".xml" and weights.exists() else 0)


def formats_of(to: str) -> list[str]:
    if to == "all":
        return list(FORMATS)
    if to not in FORMATS:
        raise DetcompressError(f"--to is '{to}'; valid: {', '.join([*FORMATS, 'all'])}")
    return [to]


def default_out_dir(checkpoint: Path) -> Path:
    return checkpoint.parent / f"{checkpoint.stem}_export"


def _checked_output(
    checkpoint: Path, out: Path | None, batch: int, dynamic_batch: bool, force: bool
) -> Path:
    """The output folder, once the batch options and the folder are known to be usable."""
    if batch < 1:
        raise DetcompressError(f"--batch is {batch}; it must be at least 1")
    if dynamic_batch and batch != 1:
        raise DetcompressError(
            f"--batch {batch} with --dynamic-batch or --dynamic-shape: a dynamic batch has no "
            "fixed size; give one of the two"
        )
    out_dir = out or default_out_dir(checkpoint)
    check_output_dir(out_dir, "--out")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(f"{out_dir}: already exists; choose another --out or pass --force")
    return out_dir


def export(
    checkpoint: Path,
    to: str = "openvino",
    out: Path | None = None,
    input_shape: tuple[int, int] | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    postprocessing: bool | None = None,
    fp16_weights: bool = False,
    force: bool = False,
    config: Path | None = None,
    trust_checkpoint: bool = False,
    verify_images: int = 4,
    input_format: str = "f32-nchw",
    dynamic_shape: bool = False,
) -> ExportResult:
    """`checkpoint` exported to each of `to`'s formats, verified, in `out` (atomically)."""
    # Long on purpose: the export steps in order (load, graph, reference, then write and
    # verify each format).
    formats = formats_of(to)
    if input_format not in INPUT_FORMATS:
        raise DetcompressError(f"--input is '{input_format}'; valid: {', '.join(INPUT_FORMATS)}")
    dynamic_batch = dynamic_batch or dynamic_shape  # a dynamic shape is dynamic in all three
    out_dir = _checked_output(checkpoint, out, batch, dynamic_batch, force)

    loaded = load_detector(checkpoint, config, trust_checkpoint)
    prep = preprocessing_of(loaded.cfg, input_shape, str(checkpoint))
    if postprocessing is None:
        postprocessing = bool(loaded.meta.get("nncf_compress_postprocessing", True))
    if is_two_stage(loaded.model):
        _check_two_stage_options(checkpoint, postprocessing, dynamic_batch)
    images = verification_batch(loaded, prep, max(verify_images, batch))
    # A static batch runs the images in chunks of that size; a dynamic one in chunks of 2.
    chunk = 2 if dynamic_batch else batch
    images = repeat_to(images, -(-len(images) // chunk) * chunk)
    example = images[:chunk]
    detector = loaded.model
    if loaded.has_nncf_hooks:
        from detcompress.compression import nncf_adapter

        detector = nncf_adapter.strip_for_export(detector, normalize(prep, example[:1]))
    detector.eval()
    graph = DeployableDetector(detector, prep, decode_boxes=postprocessing).eval()
    params = graph.nms
    output_names = DECODED_OUTPUTS if postprocessing else graph.raw_output_names
    precision = loaded.precision
    # Model API feeds one image at a time into a model of static size, resized to it: a
    # pipeline without a Resize (images padded as they are) has no Model API equivalent.
    model_info = (
        model_api_info(prep, params, loaded.classes)
        if params is not None and batch == 1 and not dynamic_batch and prep.resize_scale
        else None
    )
    model_input = _input_description(
        input_format, prep, -1 if dynamic_batch else batch, dynamic_shape
    )
    metadata = _metadata(loaded, prep, graph, params, precision, formats, model_info, model_input)

    files: dict[str, Path] = {}
    verification: dict[str, dict[str, Any]] = {}
    min_score = (params.score_threshold if params else 0.0) + DETECTION_SCORE_MARGIN
    # A dynamic shape is verified at the export size and at a second, non-square one.
    sizes = [(prep, images)]
    if dynamic_shape:
        sizes.append(_second_size(prep, images))
    references = [pytorch_reference(graph, detector, p, imgs, min_score) for p, imgs in sizes]
    spec = _GraphToWrite(
        graph,
        example,
        output_names,
        params,
        metadata,
        None if dynamic_batch else batch,
        fp16_weights,
        model_info,
        input_format,
        dynamic_shape,
    )
    hint = int8_saturation_hint(precision, loaded.meta.get("nncf_config") or {})
    # Raw outputs per size, when detections are few (once for all formats).
    networks: dict[int, tuple[_GraphToWrite, Any]] = {}
    with atomic_dir(out_dir, replace=force) as tmp:
        for fmt in formats:
            path = tmp / FORMATS[fmt]
            console.log.info(f"exporting {fmt}: {out_dir / path.name}")
            _write(fmt, spec, path)
            checks = []
            for index, ((_, size_images), reference) in enumerate(
                zip(sizes, references, strict=True)
            ):
                check = verify_export(
                    fmt, path, size_images, chunk, reference, precision, params, min_score, hint
                )
                if params is not None and check["detections_checked"] < MIN_DETECTIONS_COMPARED:
                    if index not in networks:
                        networks[index] = _network_reference(spec, size_images)
                    check = _verify_network_too(
                        fmt, check, networks[index], size_images, chunk, precision, hint
                    )
                checks.append(check)
            check = checks[0]
            if dynamic_shape:
                second_prep, second = sizes[1][0], checks[1]
                size_name = f"{second_prep.height}x{second_prep.width}"
                check = {
                    **check,
                    "second_size": {
                        "input_shape": [second_prep.height, second_prep.width],
                        **{k: v for k, v in second.items() if k != "summary"},
                    },
                    "summary": f"{check['summary']}; at {size_name}: {second['summary']}",
                }
            verification[fmt] = check
            console.log.info(f"verified {fmt}: {verification[fmt]['summary']}")
            files[fmt] = out_dir / path.name
        metadata["verification"] = {
            k: {m: n for m, n in v.items() if m != "summary"} for k, v in verification.items()
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    files["metadata"] = out_dir / METADATA_FILE
    return ExportResult(out_dir, files, metadata, verification)


def _check_two_stage_options(checkpoint: Path, postprocessing: bool, dynamic: bool) -> None:
    """A two-stage detector's graph selects its proposals inside: it has no raw outputs that
    mmdet could decode, and its proposal count per image is fixed by the traced batch."""
    if not postprocessing:
        raise DetcompressError(
            f"{checkpoint}: a two-stage detector exports with its postprocessing inside only "
            "(its RoI head needs the proposals chosen in the graph); drop --no-postprocessing"
        )
    if dynamic:
        raise DetcompressError(
            f"{checkpoint}: a two-stage detector exports with a fixed batch and input size; "
            "drop --dynamic-batch/--dynamic-shape (give --batch N and --input-shape H W)"
        )


def _metadata(
    loaded: LoadedDetector,
    prep: Preprocessing,
    graph: DeployableDetector,
    params: NMSParams | None,
    precision: str,
    formats: list[str],
    model_info: dict[str, str] | None,
    model_input: dict[str, Any],
) -> dict[str, Any]:
    from detcompress.train.runner import package_versions

    if params is not None:
        outputs = [
            {
                "name": DETECTIONS_OUTPUT,
                "shape": [-1, len(DETECTION_COLUMNS)],
                "columns": DETECTION_COLUMNS,
                "meaning": "final detections after NMS, boxes in input-image pixels, sorted by "
                "image then score",
            }
        ]
        if model_info is not None:
            outputs += [
                {
                    "name": MODEL_API_OUTPUTS[0],
                    "shape": [1, -1, 5],
                    "columns": ["x1", "y1", "x2", "y2", "score"],
                    "meaning": "the detections' boxes and scores, as OpenVINO's Model API reads "
                    "them",
                },
                {
                    "name": MODEL_API_OUTPUTS[1],
                    "shape": [1, -1],
                    "meaning": "the detections' labels (int64), as OpenVINO's Model API reads them",
                },
            ]
    else:
        outputs = [
            {
                "name": name,
                "meaning": f"head output '{name.split('.')[0]}' of level "
                f"{name.split('.')[1]}, raw (mmdet's {graph.head_name}"
                ".predict_by_feat decodes it)",
            }
            for name in graph.raw_output_names
        ]
    return {
        "format_version": METADATA_VERSION,
        "task": "detection",
        "precision": precision,
        "classes": loaded.classes,
        "input": model_input,
        "preprocessing": prep.to_json(),
        "postprocessing": params is not None,
        "nms": params.to_json() if params is not None else None,
        "head": graph.head_name,
        "clip_boxes": graph.head_name not in UNCLIPPED_HEADS,
        "outputs": outputs,
        "output_groups": {"names": graph.groups, "levels": graph.group_sizes},
        "files": {fmt: FORMATS[fmt] for fmt in formats},
        "model_api": model_info,
        "nncf_config": loaded.meta.get("nncf_config") or {},
        "config_text": loaded.cfg.pretty_text,
        "source_checkpoint": {"path": str(loaded.path), "sha256": sha256_of(loaded.path)},
        "versions": package_versions("nncf", "openvino", "onnx", "onnxruntime"),
    }


def _second_size(prep: Preprocessing, images: torch.Tensor) -> tuple[Preprocessing, torch.Tensor]:
    """A second input size for verifying a dynamic-shape export, taller and narrower than the
    export size (multiples of the size divisor), and the images padded or cropped to it."""
    divisor = prep.size_divisor
    height = -(-prep.height * 3 // 2 // divisor) * divisor
    width = max(divisor, prep.width * 3 // 4 // divisor * divisor)
    second = replace(prep, height=height, width=width)
    canvas = torch.full((len(images), 3, height, width), prep.pad_value)
    canvas[:, :, : prep.height, :width] = images[:, :, :, :width]
    return second, canvas


def _input_description(
    input_format: str, prep: Preprocessing, batch: int, dynamic_shape: bool
) -> dict[str, Any]:
    """model.json's `input` (-1: a dynamic dimension)."""
    inside = ["bgr_to_rgb"] * prep.bgr_to_rgb + ["(x - mean) / std"]
    height, width = (-1, -1) if dynamic_shape else (prep.height, prep.width)
    description = {
        "name": INPUT_NAME,
        "format": input_format,
        "shape": [batch, 3, height, width],
        "layout": "NCHW",
        "dtype": "float32",
        "channel_order": "BGR",
        "value_range": [0, 255],
        "inside_model": inside,
    }
    if input_format == "u8-nhwc":
        description.update(
            shape=[batch, height, width, 3],
            layout="NHWC",
            dtype="uint8",
            inside_model=["uint8 -> float32", "NHWC -> NCHW", *inside],
        )
    return description


def model_api_info(prep: Preprocessing, params: NMSParams, classes: list[str]) -> dict[str, str]:
    """OpenVINO Model API's `model_info` for an export with postprocessing: its SSD wrapper reads
    the `boxes`/`labels` outputs, resizes a raw BGR image as mmdet's test pipeline does
    (`fit_to_window`: keep the ratio, pad bottom-right; exact when the pipeline's Resize scale is
    the input size, e.g. square), and leaves the channel flip and mean/std to the graph."""
    return {
        "model_type": "ssd",
        # Model API splits the list on whitespace.
        "labels": " ".join(name.replace(" ", "_") for name in classes),
        "confidence_threshold": repr(params.score_threshold),
        "iou_threshold": repr(params.iou_threshold),
        "nms_execute": "False",  # NMS runs inside the graph
        "resize_type": "fit_to_window" if prep.keep_ratio else "standard",
        "interpolation_mode": "LINEAR",
        "pad_value": str(round(prep.pad_value)),
        "reverse_input_channels": "False",
        "mean_values": "0 0 0",
        "scale_values": "1 1 1",
    }


@dataclass
class _GraphToWrite:
    """What both formats are written from."""

    graph: DeployableDetector
    example: torch.Tensor
    output_names: list[str]
    params: NMSParams | None  # NMS appended to the graph, or raw outputs
    metadata: dict[str, Any]
    batch: int | None  # None: dynamic
    fp16_weights: bool
    model_info: dict[str, str] | None  # Model API's outputs and rt_info entries, or none
    input_format: str  # one of INPUT_FORMATS
    dynamic_size: bool  # height and width dynamic (the batch too)


@torch.no_grad()
def _write(fmt: str, spec: _GraphToWrite, path: Path) -> None:
    if fmt == "openvino":
        from detcompress.deploy import openvino_backend

        if spec.graph.two_stage:
            # Its NMS and RoiAlign convert from ONNX only (two_stage.py).
            from detcompress.deploy import onnx_backend

            onnx_path = path.with_name("two_stage_graph.onnx")
            onnx_backend.export(spec.graph, spec.example, onnx_path, spec.output_names, False)
            model = openvino_backend.convert_onnx(onnx_path, spec.output_names)
            onnx_path.unlink()
        else:
            model = openvino_backend.convert(
                spec.graph, spec.example, spec.batch, spec.output_names, spec.dynamic_size
            )
        if spec.params is not None:
            model = openvino_backend.append_nms(model, spec.params, spec.model_info is not None)
        if spec.input_format == "u8-nhwc":
            model = openvino_backend.with_u8_nhwc_input(model)
        openvino_backend.save(model, path, spec.metadata, spec.fp16_weights, spec.model_info)
        return
    from detcompress.deploy import onnx_backend

    dynamic_batch = spec.batch is None
    onnx_backend.export(
        spec.graph, spec.example, path, spec.output_names, dynamic_batch, spec.dynamic_size
    )
    if spec.params is not None:
        onnx_backend.append_nms(path, spec.params, spec.model_info is not None)
    if spec.input_format == "u8-nhwc":
        onnx_backend.with_u8_nhwc_input(path)
    onnx_backend.set_metadata(path, spec.metadata, spec.model_info)


def _network_reference(spec: _GraphToWrite, images: torch.Tensor) -> tuple[_GraphToWrite, Any]:
    """The same network without postprocessing, and PyTorch's raw outputs of it."""
    raw_graph = DeployableDetector(spec.graph.detector, spec.graph.prep, decode_boxes=False)
    raw_graph.eval()
    raw_spec = replace(
        spec,
        graph=raw_graph,
        output_names=raw_graph.raw_output_names,
        params=None,
        metadata={},
        model_info=None,
    )
    return raw_spec, pytorch_reference(raw_graph, raw_graph.detector, raw_graph.prep, images, 0.0)


def _verify_network_too(
    fmt: str,
    check: dict[str, Any],
    network: tuple[_GraphToWrite, Any],
    images: torch.Tensor,
    chunk: int,
    precision: str,
    hint: str,
) -> dict[str, Any]:
    """Too few detections to compare (an untrained model): the same network, exported without
    postprocessing to a scratch folder, must also match PyTorch's raw outputs."""
    import tempfile

    raw_spec, reference = network
    with tempfile.TemporaryDirectory(prefix="detcompress_verify_") as scratch:
        path = Path(scratch) / FORMATS[fmt]
        _write(fmt, raw_spec, path)
        raw = verify_export(fmt, path, images, chunk, reference, precision, None, 0.0, hint)
    return {
        **check,
        "raw_outputs": {k: v for k, v in raw.items() if k != "summary"},
        "summary": f"{check['summary']}; too few to say much, so the network's raw outputs were "
        f"compared too: {raw['summary']}",
    }
