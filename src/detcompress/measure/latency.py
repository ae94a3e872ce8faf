"""Latency and throughput of OpenVINO IR, ONNX and PyTorch models, side by side in one run.

Latency: synchronous calls after a warm-up (median, p90, p99). Throughput: concurrent requests
(OpenVINO's asynchronous requests with the THROUGHPUT hint; onnxruntime sessions run from one
thread per core; PyTorch one stream, batch / mean call time). Every model gets the same input:
a fixed random BGR image (seed 0) at the model's own input size."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detcompress.errors import DetcompressError
from detcompress.model.load import model_kind

BACKENDS = {"openvino": "openvino", "onnx": "onnxruntime", "pytorch": "pytorch"}  # by kind
DEVICES = ("CPU", "GPU", "AUTO")
MODES = ("latency", "throughput", "both")
PRECISIONS = ("auto", "f32")
MAX_SECONDS = 3600.0
MIN_CALLS_PER_ROUND = 3  # a round's median of fewer calls means nothing, whatever --seconds says
DEFAULT_ROUNDS = 5
LAYER_PROFILE_CALLS = 20
MAX_ROUNDS = 1000
WARMUP_SECONDS_MAX = 2.0
# CPU features that decide which precision an FP32 model really runs in, and how fast int8 is.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass
class Measurement:
    model: str
    backend: str
    precision: str  # what the compute really runs in: int8, bf16, f32, fake-int8 (torch QAT)
    batch: int
    input_shape: list[int]
    postprocessing: bool | None  # NMS inside the model (None: not known, e.g. a foreign file)
    size_mb: float
    latency_ms: dict[str, float] | None = None
    latency_calls: int = 0
    throughput_fps: float | None = None  # median of the rounds
    throughput_streams: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    # Medians of the per-round ratios: the first model's median latency / this one's, this
    # one's fps / the first's; their intervals and the per-round data in `rounds`.
    speedup: float | None = None
    throughput_speedup: float | None = None
    rounds: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # from --eval-json

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "batch": self.batch,
            "input_shape": self.input_shape,
            "postprocessing": self.postprocessing,
            "latency_ms": self.latency_ms,
            "latency_calls": self.latency_calls,
            "throughput_fps": _round(self.throughput_fps),
            "throughput_streams": self.throughput_streams,
            "size_mb": round(self.size_mb, 3),
            "speedup": _round(self.speedup, 4),
            "throughput_speedup": _round(self.throughput_speedup, 4),
            "rounds": self.rounds,
            **({"metrics": self.metrics} if self.metrics else {}),
            **self.details,
        }


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    results: list[Measurement]

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "results": [r.to_json() for r in self.results],
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (empty where /proc/cpuinfo is not there)."""
    flags: set[str] = set()
    cpu_model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu_model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return cpu_model, flags


def lacks_int8_dot_product() -> bool:
    """An x86 CPU without VNNI or AMX: its int8 convolutions multiply u8 x i8 pairs into int16
    (AVX2's VPMADDUBSW), which saturates with full-range 8-bit weights."""
    _, flags = cpu_model_and_flags()
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def machine_info() -> dict[str, Any]:
    import openvino as ov

    from detcompress.deploy import openvino_backend

    cpu_model, flags = cpu_model_and_flags()
    core = openvino_backend.core()
    return {
        "cpu": str(core.get_property("CPU", "FULL_DEVICE_NAME")) or cpu_model,
        "cpu_model_name": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_features": [f for f in CPU_FEATURES if f in flags],
        "openvino_cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "openvino_devices": list(core.available_devices),
        "openvino": ov.get_version(),
        "python": platform.python_version(),
    }


def file_size_mb(path: Path) -> float:
    """The bytes a model needs on disk: .xml + .bin; .onnx + its external data; the .pth."""
    files = [path]
    if path.suffix == ".xml":
        files.append(path.with_suffix(".bin"))
    elif path.suffix == ".onnx":
        from detcompress.deploy import onnx_backend

        files += onnx_backend.external_data_files(path)
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def check_inputs(
    models: list[Path],
    device: str,
    mode: str,
    precision: str,
    seconds: float,
    batch: int | None,
    threads: int | None,
    rounds: int = DEFAULT_ROUNDS,
    layers: int = 0,
) -> None:
    """Every mistake in the arguments, before anything is loaded or measured."""
    if not models:
        raise DetcompressError("bench: give at least one model (.xml, .onnx or .pth)")
    for path in models:
        model_kind(path)
    if device not in DEVICES:
        raise DetcompressError(f"--device {device}: not supported; valid: {', '.join(DEVICES)}")
    if mode not in MODES:
        raise DetcompressError(f"--mode {mode}: not supported; valid: {', '.join(MODES)}")
    precision_per_model(precision, len(models))
    if not 0 < seconds <= MAX_SECONDS:  # also refuses nan and inf
        raise DetcompressError(
            f"--seconds {seconds}: must be more than 0 and at most {MAX_SECONDS:g} (seconds per "
            "model and mode)"
        )
    if batch is not None and batch < 1:
        raise DetcompressError(f"--batch {batch}: must be at least 1")
    if threads is not None and threads < 1:
        raise DetcompressError(f"--threads {threads}: must be at least 1")
    if layers < 0:
        raise DetcompressError(f"--layers {layers}: must be 0 (off) or more (the slowest N)")
    if layers and not any(model_kind(path) == "openvino" for path in models):
        raise DetcompressError(
            "--layers: per-layer times come from OpenVINO's performance counters; give at "
            "least one .xml model"
        )
    if not 1 <= rounds <= MAX_ROUNDS:
        raise DetcompressError(
            f"--rounds {rounds}: must be from 1 to {MAX_ROUNDS} (each model measured once per "
            "round, in turn)"
        )


def precision_per_model(precision: str, count: int) -> list[str]:
    """`--precision auto`, or one value per model (`f32,auto`): the list of `count` values."""
    values = [value.strip() for value in precision.split(",")]
    for value in values:
        if value not in PRECISIONS:
            raise DetcompressError(
                f"--precision {precision}: '{value}' is not supported; valid: "
                f"{', '.join(PRECISIONS)} (one for all models, or one per model: f32,auto)"
            )
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise DetcompressError(
            f"--precision {precision}: {len(values)} values for {count} model(s); give one value "
            "for all models or one per model"
        )
    return values


def _check_device_available(path: Path, backend: str, device: str) -> None:
    if backend == "openvino":
        from detcompress.deploy import openvino_backend

        available = list(openvino_backend.core().available_devices)
        if device != "AUTO" and not any(d.split(".")[0] == device for d in available):
            raise DetcompressError(
                f"{path}: OpenVINO device {device} is not available on this machine; "
                f"available: {', '.join(available)}"
            )
    elif backend == "onnxruntime" and device == "GPU":
        raise DetcompressError(
            f"{path}: detcompress runs ONNX models with onnxruntime's CPU provider only; "
            "use --device CPU, or bench the OpenVINO IR on GPU"
        )
    elif backend == "pytorch" and device == "GPU":
        import torch

        if not torch.cuda.is_available():
            raise DetcompressError(f"{path}: --device GPU needs CUDA, which torch cannot see here")


@dataclass
class _Subject:
    """One model made ready to measure: its result so far, one synchronous call, and a
    throughput burst (frames, seconds) of about the seconds asked (None: derived from latency)."""

    result: Measurement
    call: Callable[[], Any]
    burst: Callable[[float], tuple[int, float]] | None
    layer_times: Callable[[], list[dict[str, Any]]] | None = None  # OpenVINO only


@dataclass
class _Rounds:
    """What one model measured in each round."""

    latency_ms: list[list[float]] = field(default_factory=list)  # per round, every call
    fps: list[float] = field(default_factory=list)


def _timed_calls(call: Callable[[], Any], seconds: float) -> list[float]:
    """Milliseconds of each call for `seconds` (at least MIN_CALLS_PER_ROUND), after a short
    warm-up: the model before may have evicted this one's weights from the caches."""
    warm_until = time.perf_counter() + min(WARMUP_SECONDS_MAX, seconds / 4)
    call()
    while time.perf_counter() < warm_until:
        call()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < MIN_CALLS_PER_ROUND:
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _measure_interleaved(
    subjects: list[_Subject],
    mode: str,
    seconds: float,
    rounds: int,
    progress: Callable[[str], None] | None,
) -> list[_Rounds]:
    """Round after round, each model in turn for `seconds / rounds` per mode (A B C, C B A,
    ...): a machine that gets slower or faster meanwhile slows every model of a round alike,
    so per-round ratios stay meaningful where numbers measured one after the other do not."""
    per_round = seconds / rounds
    measured = [_Rounds() for _ in subjects]
    for subject in subjects:
        subject.call()  # the first call pays for lazy initialization
    for index in range(rounds):
        if progress:
            progress(f"round {index + 1}/{rounds}: {len(subjects)} models, {per_round:.2g} s each")
        # Odd rounds in reverse (A B C, C B A, ...): no model always follows the same one, and
        # a steady drift weighs on every model alike.
        order = list(zip(subjects, measured, strict=True))
        for subject, rounds_of in order[::-1] if index % 2 else order:
            if mode in ("latency", "both") or subject.burst is None:
                rounds_of.latency_ms.append(_timed_calls(subject.call, per_round))
            if mode in ("throughput", "both") and subject.burst is not None:
                frames, elapsed = subject.burst(per_round)
                rounds_of.fps.append(frames / elapsed)
    return measured


def _fill_in(subject: _Subject, rounds_of: _Rounds, mode: str) -> None:
    result = subject.result
    if rounds_of.latency_ms:
        times = [t for round_times in rounds_of.latency_ms for t in round_times]
        quantiles = np.percentile(np.array(times), [50, 90, 99])
        result.latency_ms = {
            "median": round(float(quantiles[0]), 4),
            "p90": round(float(quantiles[1]), 4),
            "p99": round(float(quantiles[2]), 4),
            "mean": round(statistics.fmean(times), 4),
            "min": round(min(times), 4),
        }
        result.latency_calls = len(times)
        result.rounds["latency_ms_median"] = [
            round(statistics.median(t), 4) for t in rounds_of.latency_ms
        ]
    if mode in ("throughput", "both"):
        if subject.burst is None:  # one stream: throughput is the inverse of the mean latency
            assert result.latency_ms is not None
            result.rounds["fps"] = [
                round(result.batch * 1e3 / statistics.fmean(t), 3) for t in rounds_of.latency_ms
            ]
            result.throughput_streams = 1
        else:
            result.rounds["fps"] = [round(v, 3) for v in rounds_of.fps]
        result.throughput_fps = statistics.median(result.rounds["fps"])
    if mode == "throughput":
        result.latency_ms, result.latency_calls = None, 0
        result.rounds.pop("latency_ms_median", None)


def layer_summary(layers: list[dict[str, Any]], top: int) -> dict[str, Any]:
    """Per-layer times grouped by (layer type, precision), and the `top` slowest layers."""
    total = sum(layer["ms"] for layer in layers)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for layer in layers:
        group = groups.setdefault(
            (layer["type"], layer["precision"]),
            {"type": layer["type"], "precision": layer["precision"], "layers": 0, "ms": 0.0},
        )
        group["layers"] += 1
        group["ms"] += layer["ms"]
    by_type = sorted(groups.values(), key=lambda group: -group["ms"])
    for group in by_type:
        group["share"] = round(group["ms"] / total, 4) if total else 0.0
        group["ms"] = round(group["ms"], 4)
    return {
        "total_ms": round(total, 4),
        "calls": LAYER_PROFILE_CALLS,
        "by_type": by_type,
        "top": [{**layer, "ms": round(layer["ms"], 4)} for layer in layers[:top]],
    }


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """(low, high, confidence) of a distribution-free interval for the median of `values`: the
    k-th smallest and k-th largest, k as large as keeps the confidence >= 95% (with fewer than
    6 values, the smallest and largest, at 1 - 2 / 2**n)."""
    ordered = sorted(values)
    n = len(ordered)
    k = 1
    while k < n // 2 and _binomial_tail(n, k) <= 0.025:  # P(fewer than k+1 below the median)
        k += 1
    confidence = 1 - 2 * _binomial_tail(n, k - 1)
    return ordered[k - 1], ordered[n - k], confidence


def _binomial_tail(n: int, k: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def _speedups(first: Measurement, result: Measurement) -> None:
    """Each speed-up as the median of per-round ratios, with its interval."""
    for key, name, invert in (
        ("latency_ms_median", "speedup", False),
        ("fps", "throughput_speedup", True),
    ):
        mine, theirs = result.rounds.get(key), first.rounds.get(key)
        if not mine or not theirs:
            continue
        ratios = [(m / t) if invert else (t / m) for m, t in zip(mine, theirs, strict=True)]
        low, high, confidence = median_interval(ratios)
        setattr(result, name, statistics.median(ratios))
        result.rounds[f"{name}_per_round"] = [round(r, 4) for r in ratios]
        result.rounds[f"{name}_interval"] = {
            "low": round(low, 4),
            "high": round(high, 4),
            "confidence": round(confidence, 4),
            "within_noise": low <= 1.0 <= high,
        }


def _random_image(shape: list[int], metadata: dict[str, Any] | None) -> np.ndarray:
    """Random pixels in the model's input type (uint8 for an export with --input u8-nhwc)."""
    pixels = np.random.default_rng(0).uniform(0, 255, size=shape)
    takes_u8 = metadata is not None and metadata["input"].get("dtype") == "uint8"
    return pixels.astype(np.uint8 if takes_u8 else np.float32)


def _input_shape(
    metadata: dict[str, Any] | None, declared: list[int], batch: int | None, path: Path
) -> list[int]:
    """The input shape to run ([N, 3, H, W], or [N, H, W, 3] for a uint8 NHWC input): N from
    --batch (else the model's; 1 if dynamic), H, W the model's, or for an export with a dynamic
    shape the size it was exported at (the model stays dynamic: that is what is measured)."""
    if metadata is not None:
        declared = list(metadata["input"]["shape"])
        prep = metadata.get("preprocessing") or {}
        if any(d < 0 for d in declared[1:]) and prep.get("height") and prep.get("width"):
            axes = (1, 2) if metadata["input"].get("layout") == "NHWC" else (2, 3)
            declared[axes[0]], declared[axes[1]] = int(prep["height"]), int(prep["width"])
    if any(d < 0 for d in declared[1:]):
        raise DetcompressError(
            f"{path}: its input {declared} has a dynamic height or width; export it with a fixed "
            "--input-shape"
        )
    model_batch = int(declared[0])
    return [batch or (model_batch if model_batch > 0 else 1), *declared[1:]]


def _openvino_model_for(path: Path, batch: int | None) -> tuple[Any, list[int], Any]:
    """(ov.Model with the batch to run, its input shape, detcompress metadata or None)."""
    from detcompress.deploy import openvino_backend

    metadata = openvino_backend.read_metadata(path)
    model = openvino_backend.read_model(path)
    shape = _input_shape(metadata, openvino_backend.input_shape(model), batch, path)
    try:
        model = openvino_backend.with_batch(model, shape[0])
    except RuntimeError:  # shapes traced at the export's batch (postprocessing) do not reshape
        raise DetcompressError(
            f"{path}: its batch is fixed at {openvino_backend.input_shape(model)[0]}, not "
            f"{shape[0]}; export with --batch {shape[0]} or --dynamic-batch"
        ) from None
    return model, shape, metadata


def _onnx_shape_for(path: Path, batch: int | None) -> tuple[list[int], Any]:
    from detcompress.deploy import onnx_backend

    metadata = onnx_backend.read_metadata(path)
    declared = onnx_backend.input_shape(path)
    shape = _input_shape(metadata, declared, batch, path)
    if declared[0] > 0 and declared[0] != shape[0]:
        raise DetcompressError(
            f"{path}: its batch is fixed at {declared[0]}, not {shape[0]}; export with "
            f"--batch {shape[0]} or --dynamic-batch"
        )
    return shape, metadata


def _check_runnable(path: Path, backend: str, batch: int | None) -> None:
    """Fail before the first measurement, not after minutes of measuring other models."""
    if backend == "openvino":
        _openvino_model_for(path, batch)
    elif backend == "onnxruntime":
        _onnx_shape_for(path, batch)


def _prepare_openvino(
    path: Path, device: str, mode: str, f32: bool, batch: int | None, threads: int | None
) -> _Subject:
    from detcompress.deploy import openvino_backend

    model, shape, metadata = _openvino_model_for(path, batch)
    image = _random_image(shape, metadata)
    result = Measurement(
        model=str(path),
        backend="openvino",
        precision="",
        batch=shape[0],
        input_shape=shape,
        postprocessing=None if metadata is None else bool(metadata.get("postprocessing")),
        size_mb=file_size_mb(path),
    )
    compiled = openvino_backend.compile_for_speed(model, device, "LATENCY", f32, threads)
    request = compiled.create_infer_request()
    burst = None
    if mode in ("throughput", "both"):
        streams = openvino_backend.compile_for_speed(model, device, "THROUGHPUT", f32, threads)
        result.throughput_streams = int(streams.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

        def burst(seconds: float) -> tuple[int, float]:
            frames, elapsed, _ = openvino_backend.run_async(streams, image, seconds)
            return frames, elapsed

    floating = openvino_backend.inference_precision(compiled)
    int8, convolutions = openvino_backend.int8_convolutions(compiled)
    result.precision = "int8" if int8 else floating
    result.details = {
        "float_precision": floating,
        "int8_convolutions": int8,
        "convolutions": convolutions,
    }
    return _Subject(
        result,
        lambda: request.infer({openvino_backend.INPUT_NAME: image}),
        burst,
        lambda: openvino_backend.layer_times(
            model, device, f32, threads, image, LAYER_PROFILE_CALLS
        ),
    )


def _prepare_onnx(path: Path, mode: str, batch: int | None, threads: int | None) -> _Subject:
    from concurrent.futures import ThreadPoolExecutor

    from detcompress.deploy import onnx_backend

    shape, metadata = _onnx_shape_for(path, batch)
    image = _random_image(shape, metadata)
    counts = onnx_backend.operation_counts(path)
    int8 = counts.get("QuantizeLinear", 0) + counts.get("QLinearConv", 0)
    result = Measurement(
        model=str(path),
        backend="onnxruntime",
        precision="int8" if int8 else "f32",
        batch=shape[0],
        input_shape=shape,
        postprocessing=None if metadata is None else bool(metadata.get("postprocessing")),
        size_mb=file_size_mb(path),
        details={"quantize_linear_nodes": counts.get("QuantizeLinear", 0)},
    )
    session = onnx_backend.session(path, threads=threads)
    burst = None
    if mode in ("throughput", "both"):
        # One single-threaded run per core at a time: onnxruntime's Run is thread-safe and, with
        # one intra-op thread, computes on the calling thread (the GIL is released).
        streams = threads or len(os.sched_getaffinity(0))
        single = onnx_backend.session(path, threads=1)
        onnx_backend.infer(single, image)
        result.throughput_streams = streams

        def burst(seconds: float) -> tuple[int, float]:
            end = time.perf_counter() + seconds

            def worker() -> int:
                calls = 0
                while time.perf_counter() < end or calls == 0:
                    onnx_backend.infer(single, image)
                    calls += 1
                return calls

            start = time.perf_counter()
            with ThreadPoolExecutor(streams) as pool:
                calls = sum(pool.map(lambda _: worker(), range(streams)))
            return calls * shape[0], time.perf_counter() - start

    return _Subject(result, lambda: onnx_backend.infer(session, image), burst)


def _prepare_pytorch(
    path: Path, device: str, batch: int | None, threads: int | None, trust_checkpoint: bool
) -> _Subject:
    import torch

    from detcompress.deploy.graph import DeployableDetector, preprocessing_of
    from detcompress.model.load import load_detector

    if threads:
        torch.set_num_threads(threads)
    loaded = load_detector(path, trust_checkpoint=trust_checkpoint)
    prep = preprocessing_of(loaded.cfg, None, str(path))
    # The raw network, as an export without postprocessing holds it: mmdet's own NMS is
    # Python-heavy and would make the comparison about the postprocessing.
    graph = DeployableDetector(loaded.model, prep, decode_boxes=False).eval()
    torch_device = "cuda" if device == "GPU" else "cpu"
    graph.to(torch_device)
    shape = [batch or 1, 3, prep.height, prep.width]
    image = torch.from_numpy(_random_image(shape, None)).to(torch_device)

    def call() -> None:
        with torch.no_grad():
            graph(image)
        if torch_device == "cuda":
            torch.cuda.synchronize()

    result = Measurement(
        model=str(path),
        backend="pytorch",
        precision="fake-int8" if loaded.quantized else "f32",
        batch=shape[0],
        input_shape=shape,
        postprocessing=False,
        size_mb=file_size_mb(path),
    )
    return _Subject(result, call, None)


def read_eval_jsons(paths: list[Path]) -> list[dict[str, Any]]:
    """`detcompress eval --json` results, checked before anything is measured."""
    import json

    results = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DetcompressError(f"{path}: not a readable eval JSON ({exc})") from None
        if not isinstance(data, dict) or "model" not in data or "bbox_mAP" not in data:
            raise DetcompressError(
                f"{path}: not an eval result; expected the JSON of 'detcompress eval --json' "
                "(keys 'model' and 'bbox_mAP')"
            )
        results.append({**data, "_source": str(path)})
    return results


def attach_metrics(results: list[Measurement], evaluations: list[dict[str, Any]]) -> None:
    """Each eval result goes to the benchmarked model it was computed for (same file)."""
    by_path = {Path(r.model).resolve(): r for r in results}
    for data in evaluations:
        target = by_path.get(Path(data["model"]).resolve())
        if target is None:
            raise DetcompressError(
                f"{data['_source']}: evaluates {data['model']}, which is not among the "
                "benchmarked models"
            )
        target.metrics = {k: float(v) for k, v in data.items() if k.startswith("bbox_")}


def bench(
    models: list[Path],
    device: str = "CPU",
    batch: int | None = None,
    mode: str = "both",
    precision: str = "auto",
    seconds: float = 10.0,
    threads: int | None = None,
    rounds: int = DEFAULT_ROUNDS,
    layers: int = 0,
    eval_jsons: list[Path] | None = None,
    trust_checkpoint: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    from detcompress.model.detector import openvino_device_name

    device = openvino_device_name(device)  # `cpu`, `cuda` and `gpu` work too
    check_inputs(models, device, mode, precision, seconds, batch, threads, rounds, layers)
    evaluations = read_eval_jsons(list(eval_jsons or []))
    backends = [BACKENDS[model_kind(p)] for p in models]
    for path, backend in zip(models, backends, strict=True):
        _check_device_available(path, backend, device)
        _check_runnable(path, backend, batch)
    subjects: list[_Subject] = []
    precisions = precision_per_model(precision, len(models))
    for index, (path, backend, wanted) in enumerate(
        zip(models, backends, precisions, strict=True), 1
    ):
        if progress:
            progress(f"[{index}/{len(models)}] loading {path} ({backend})")
        if backend == "openvino":
            subject = _prepare_openvino(path, device, mode, wanted == "f32", batch, threads)
        elif backend == "onnxruntime":
            subject = _prepare_onnx(path, mode, batch, threads)
        else:
            subject = _prepare_pytorch(path, device, batch, threads, trust_checkpoint)
        subjects.append(subject)
    measured = _measure_interleaved(subjects, mode, seconds, rounds, progress)
    for subject, rounds_of in zip(subjects, measured, strict=True):
        _fill_in(subject, rounds_of, mode)
        if layers and subject.layer_times is not None:
            if progress:
                progress(f"layer profile of {subject.result.model} ({LAYER_PROFILE_CALLS} calls)")
            subject.result.details["layers"] = layer_summary(subject.layer_times(), layers)
    results = [subject.result for subject in subjects]
    for result in results:
        _speedups(results[0], result)
    attach_metrics(results, evaluations)
    settings = {
        "device": device,
        "batch": batch,
        "mode": mode,
        "precision": precision,
        "seconds": seconds,
        "threads": threads,
        "input": "one fixed random image (seed 0), BGR 0-255, at the model's input size",
        "rounds": rounds,
        "layers": layers,
        "speedup": "median over rounds of (the first model's median latency / this model's); "
        "throughput_speedup: of (this model's fps / the first's); intervals in each result's "
        "rounds: distribution-free intervals for those medians",
    }
    return BenchReport(machine_info(), settings, results)
