"""Where detcompress's int8 IR and NNCF's own OpenVINO-backend post-training quantization of the
same FP32 IR put their FakeQuantize operations, and how fast each runs (issue #22).

    .venv/bin/python benchmarks/int8_placement.py [--fp32-iters 50] [--calibration 64]
        [--preset int8_mixed] [--seconds 4] [--rounds 5] [--layers 8] [--also-sizes 256,416]
        [--also-batches 8] [--keep DIR] [--json FILE]

Steps, on the demo (yolox_tiny, 128 px, synthetic shapes): `init demo`, FP32 fine-tuning for
`--fp32-iters`, `compress --preset int8_mixed --max-iters 0` (our PTQ; the demo's preset),
`export --to openvino --no-postprocessing` of both checkpoints; then `nncf.quantize` of the
FP32 IR with NNCF's OpenVINO backend (preset MIXED, `--calibration` val images preprocessed as
examples/exported_model.py does), the comparison issue #22 asks for. Printed:

- placement: for each operation type, how many of its operations take an activation through a
  FakeQuantize in each IR, and how the activation quantizers are ranged (unsigned: low = 0,
  signed symmetric, asymmetric);
- speed: `detcompress bench` of the three IRs interleaved in rounds (median latency ratios with
  their intervals), and OpenVINO's per-layer profile grouped by (type, precision).

Placement does not depend on the CPU; the speed ratios do (bf16 or VNNI CPUs are what #22 is
about: on an AVX2-only CPU int8 is multiplied through int16 pairs). Without postprocessing, as
in ssd300_int8_speed.py: a barely trained model's NMS would time thousands of meaningless boxes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from conv_rates import convolution_rates

HERE = Path(__file__).resolve().parent


def detcompress(*args: str, quiet: bool = False) -> None:
    """Run a detcompress command (`quiet`: its tables not shown; this script prints from its
    JSON)."""
    print("$ detcompress " + " ".join(args), flush=True)
    output = subprocess.DEVNULL if quiet else None
    subprocess.run([sys.executable, "-m", "detcompress", *args], check=True, stdout=output)


def calibration_inputs(data: Path, metadata_of: Path, count: int) -> list[np.ndarray]:
    """Val images as the IR takes them (resize, pad, NCHW float 0-255), by the examples' code."""
    import cv2

    sys.path.insert(0, str(HERE.parent / "examples"))
    from exported_model import preprocess

    metadata = json.loads(metadata_of.with_name("model.json").read_text())
    images = sorted((data / "val").glob("*.jpg")) or sorted((data / "val").glob("*.png"))
    return [preprocess(cv2.imread(str(p)), metadata)[0] for p in images[:count]]


def nncf_openvino_ptq(fp32_xml: Path, inputs: list[np.ndarray], out: Path) -> Path:
    """NNCF's post-training quantization of the IR itself (the placement OpenVINO's
    low-precision transformations are written against)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_xml))
    quantized = nncf.quantize(
        model, nncf.Dataset(inputs), preset=nncf.QuantizationPreset.MIXED, subset_size=len(inputs)
    )
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out / "model.xml"))
    return out / "model.xml"


def _constant(node: Any) -> np.ndarray | None:
    while node.get_type_name() == "Convert":  # fp16-compressed constants
        node = node.input_value(0).get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def placement(xml: Path) -> dict[str, Any]:
    """Per operation type: how many there are and how many take a fake-quantized activation;
    activation quantizers by range kind; weight quantizers."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    ops = list(model.get_ordered_ops())
    total = Counter(op.get_type_name() for op in ops)
    quantized_inputs: Counter[str] = Counter()
    ranges: Counter[str] = Counter()
    # Saved IRs hold quantized weights as int8 constants (OpenVINO folds their FakeQuantize).
    weights = sum(
        op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8")
        for op in ops
    )
    for op in ops:
        if (
            op.get_type_name() != "FakeQuantize"
            or _constant(op.input_value(0).get_node()) is not None
        ):
            continue
        low, high = (_constant(op.input_value(i).get_node()) for i in (1, 2))
        if low is None or high is None:
            ranges["unknown"] += 1
        elif np.all(low == 0):
            ranges["unsigned (low 0)"] += 1
        elif np.all(low < 0) and np.allclose(-low * 127 / 128, high, rtol=0.02, atol=0):
            ranges["signed symmetric"] += 1  # NNCF's signed range: [-s, s * 127/128]
        else:
            ranges["asymmetric"] += 1
        for target in op.output(0).get_target_inputs():
            quantized_inputs[target.get_node().get_type_name()] += 1
    shown = set(quantized_inputs) | {"Convolution", "GroupConvolution", "MatMul", "Slice"}
    consumers = {
        kind: {"ops": total[kind], "quantized_activation_inputs": quantized_inputs[kind]}
        for kind in sorted(shown)
        if total[kind]
    }
    return {
        "int8_weight_constants": weights,
        "activation_ranges": dict(ranges),
        "by_type": consumers,
    }


def print_placement(placements: dict[str, dict[str, Any]]) -> None:
    names = list(placements)
    kinds = sorted({k for p in placements.values() for k in p["by_type"]})
    print("\nFakeQuantize'd activation inputs per operation type (ops of that type in the IR):")
    print("| operation | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for kind in kinds:
        cells = []
        for name in names:
            entry = placements[name]["by_type"].get(kind, {})
            cells.append(f"{entry.get('quantized_activation_inputs', 0)} ({entry.get('ops', 0)})")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    for name in names:
        p = placements[name]
        ranges = p["activation_ranges"]
        print(f"{name}: {p['int8_weight_constants']} int8 weight constants; activations: {ranges}")


def print_bench(report: dict[str, Any], slowest: int) -> None:
    results = report["results"]
    print("\nInterleaved bench (first model = FP32 IR at OpenVINO's default precision):")
    for r in results:
        latency = r["latency_ms"]
        median = latency.get("median") if isinstance(latency, dict) else latency
        interval = r.get("rounds", {}).get("speedup_interval")
        spread = f" [{interval['low']:.2f}, {interval['high']:.2f}]" if interval else ""
        print(
            f"  {r['model']}: median {median} ms, latency speed-up {r.get('speedup')}{spread}, "
            f"throughput speed-up {r.get('throughput_speedup')}"
        )
        for group in r.get("layers", {}).get("by_type", [])[:6]:
            print(
                f"    {group['type']:<18} {group['precision']:<6} {group['layers']:>3} layers "
                f"{group['ms']:.3f} ms ({group['share']:.0%})"
            )
        for layer in r.get("layers", {}).get("top", [])[:slowest]:
            print(f"      {layer['ms']:.3f} ms {layer['kernel']:<24} {layer['name'][-70:]}")


def speed_at_size(
    fp32_ckpt: str, int8_ckpt: str, size: int, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The same two checkpoints exported at another input size, benched interleaved: how the
    int8 speed-up grows with the work per layer."""
    xmls = []
    for name, ckpt in (("fp32", fp32_ckpt), ("ours", int8_ckpt)):
        out = work / f"{name}_ir_{size}"
        detcompress(
            "export", ckpt, "--to", "openvino", "--no-postprocessing", "--input-shape",
            str(size), str(size), "--out", str(out), "--force",
        )  # fmt: skip
        xmls.append(out / "model.xml")
    return bench_pair(xmls, f"{size} px", work / f"bench_{size}.json", args)


def bench_pair(
    xmls: list[Path], label: str, result: Path, args: argparse.Namespace, batch: int = 1
) -> dict[str, Any]:
    """Bench the FP32 and the int8 IR interleaved (at `batch` images per call) and print the
    speed-ups with the convolutions' multiply rates."""
    detcompress(
        "bench", *map(str, xmls), "--seconds", str(args.seconds), "--rounds", str(args.rounds),
        "--batch", str(batch), "--layers", "1000", "--json", str(result), quiet=True,
    )  # fmt: skip
    report = json.loads(result.read_text())
    fp32, int8 = report["results"]
    rounds = int8["rounds"]
    latency, throughput = rounds["speedup_interval"], rounds.get("throughput_speedup_interval")
    per_call = "" if batch == 1 else f" per call of {batch} images"
    print(
        f"\n{label}: FP32 IR ({fp32['precision']}) {fp32['latency_ms']['median']:.2f} ms, "
        f"int8 IR {int8['latency_ms']['median']:.2f} ms{per_call}: latency speed-up "
        f"{int8['speedup']:.2f} [{latency['low']:.2f}, {latency['high']:.2f}], throughput "
        f"speed-up {int8['throughput_speedup']:.2f}"
        + (f" [{throughput['low']:.2f}, {throughput['high']:.2f}]" if throughput else "")
    )
    print("  " + convolution_rates(xmls[0], fp32, xmls[1], int8))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32-iters", type=int, default=50)
    parser.add_argument("--preset", default="int8_mixed", help="ours (the demo's: int8_mixed)")
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=8, help="slowest layers shown per IR")
    parser.add_argument(
        "--also-sizes",
        type=lambda text: [int(v) for v in text.split(",") if v],
        default=[],
        metavar="256,416",
        help="also export FP32 and our int8 at these input sizes and bench each pair",
    )
    parser.add_argument(
        "--also-batches",
        type=lambda text: [int(v) for v in text.split(",") if v],
        default=[],
        metavar="8",
        help="also bench FP32 and our int8 IR at these batch sizes (the cost per call that "
        "does not grow with the batch: what batch 1 pays on top of the convolutions' work)",
    )
    parser.add_argument("--keep", type=Path, help="work here and keep the files")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="int8_placement_"))
    work.mkdir(parents=True, exist_ok=True)
    ws = work / "ws"
    if not (ws / "configs" / "demo.py").exists():
        detcompress("init", "demo", str(ws))
    config = ws / "configs" / "demo.py"
    detcompress(
        "compress", str(config), "--work-dir", str(work / "fp32"), "--max-iters",
        str(args.fp32_iters), "--json", str(work / "fp32.json"),
    )  # fmt: skip
    fp32_ckpt = json.loads((work / "fp32.json").read_text())["checkpoint"]
    detcompress(
        "compress", str(config), "--preset", args.preset, "--load-from", fp32_ckpt,
        "--max-iters", "0", "--work-dir", str(work / "int8"), "--json", str(work / "int8.json"),
    )  # fmt: skip
    int8_ckpt = json.loads((work / "int8.json").read_text())["checkpoint"]
    for name, ckpt in (("fp32", fp32_ckpt), ("ours", int8_ckpt)):
        detcompress(
            "export", ckpt, "--to", "openvino", "--no-postprocessing", "--out",
            str(work / f"{name}_ir"), "--force",
        )  # fmt: skip
    fp32_xml, ours_xml = work / "fp32_ir" / "model.xml", work / "ours_ir" / "model.xml"
    inputs = calibration_inputs(ws / "data", fp32_xml, args.calibration)
    nncf_xml = nncf_openvino_ptq(fp32_xml, inputs, work / "nncf_ov_ir")
    (work / "nncf_ov_ir" / "model.json").write_text((fp32_xml.with_name("model.json")).read_text())

    placements = {"detcompress int8": placement(ours_xml), "NNCF OV PTQ": placement(nncf_xml)}
    print_placement(placements)
    detcompress(
        "bench",
        str(fp32_xml),
        str(ours_xml),
        str(nncf_xml),
        "--seconds",
        str(args.seconds),
        "--rounds",
        str(args.rounds),
        "--layers",
        "1000",
        "--json",
        str(work / "bench.json"),
        quiet=True,
    )  # fmt: skip  (every layer profiled: the convolution rates below)
    bench = json.loads((work / "bench.json").read_text())
    print_bench(bench, args.layers)
    fp32_result, *quantized = bench["results"]
    print("\nConvolutions, FP32 IR at its default precision -> each int8 IR:")
    for name, xml, result in zip(
        ("detcompress int8", "NNCF OV PTQ"), (ours_xml, nncf_xml), quantized, strict=True
    ):
        print(f"  {name}: {convolution_rates(fp32_xml, fp32_result, xml, result)}")
    sizes = {}
    for size in args.also_sizes:
        sizes[size] = speed_at_size(fp32_ckpt, int8_ckpt, size, work, args)
    batches = {}
    for batch in args.also_batches:
        batches[batch] = bench_pair(
            [fp32_xml, ours_xml], f"batch {batch}", work / f"bench_batch{batch}.json", args, batch
        )
    print(f"\nfiles in {work}")
    if args.json:
        everything = {"placement": placements, "bench": bench, "sizes": sizes, "batches": batches}
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
