"""Which int8 dynamic-quantization settings make the packed ONNX chunk encoder fastest on this CPU, side by side.

    python benchmarks/int8_settings.py [--samples 512] [--config experiments/bench.yaml]

One process: the bench config's model (untrained: speed only; agreement with fp32 is printed but means little on
near-0.5 probabilities), exported as the packed pair, its encoder quantized several ways, each scored by
`PackedScorer` over the same validation dialogues in batches of 64 (one warm-up batch, best of two passes).
Every variant is `mmfusion.export.quantize_onnx` with other `quantize_dynamic` options (`shipped`: none); ratios are
against fp32 ONNX in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import QuantType

from mmfusion.config.loading import load_config
from mmfusion.data.datamodule import SplitDataset, collate, prepare_data
from mmfusion.encoders import load_text_backbone, load_tokenizer
from mmfusion.errors import UserError
from mmfusion.export.onnx import quantize_onnx
from mmfusion.export.packed import export_packed
from mmfusion.modeling.classifier import build_model
from mmfusion.serving.onnx_session import PackedScorer
from mmfusion.training.hardware import describe

# name -> quantize_dynamic options beyond quantize_onnx's defaults (s8 per-channel weights, MatMulConstBOnly: only
# weight matmuls, attention's stay fp32)
SETTINGS = {
    "shipped (quantize_onnx: s8 per-channel, weight matmuls)": {},
    "s8 per-tensor, every MatMul (shipped before 2026-12-03)": {"per_channel": False, "extra_options": {"MatMulConstBOnly": False}},
    "s8 per-tensor, weight matmuls only": {"per_channel": False},
    "u8 per-tensor, weight matmuls only": {"weight_type": QuantType.QUInt8, "per_channel": False},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="experiments/bench.yaml")
    ap.add_argument("--samples", type=int, default=512, help="validation dialogues scored by each variant (default 512)")
    args = ap.parse_args()
    if args.samples < 1:
        ap.error(f"--samples {args.samples}: must be >= 1")  # one usage line, exit 2
    try:
        measure(args)
    except UserError as err:  # a bad config or data: one line, as the mmfusion commands print it
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def measure(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, [f"data.synthetic.n_samples={max(1000, 7 * args.samples)}"])  # val is 15%
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    val = SplitDataset(data.splits["val"])
    items = [val[i] for i in range(min(args.samples, len(val)))]
    pre = data.preprocessor
    model = build_model(cfg.model, load_text_backbone(cfg.model.text_encoder), pre.n_numeric_features, pre.cardinalities,
                        len(pre.classes), len(pre.texts)).eval()
    with tempfile.TemporaryDirectory(prefix="int8-settings-") as tmp:
        encoder, head = export_packed(model, collate(items[:8], tokenizer.pad_token_id), Path(tmp) / "packed")
        variants = {"fp32": encoder} | {name: quantize_onnx(encoder, Path(tmp) / f"v{i}.onnx", **options) for i, (name, options) in enumerate(SETTINGS.items())}
        batches = [collate(items[i : i + 64], tokenizer.pad_token_id) for i in range(0, len(items), 64)]
        print(f"{describe()}; {len(items)} samples in batches of 64", flush=True)
        base, reference = None, None
        for name, path in variants.items():
            scorer = PackedScorer(path, head, torch.get_num_threads())
            scorer(batches[0])  # warm-up
            passes = []
            for _ in range(2):
                started = time.perf_counter()
                probs = np.concatenate([scorer(b)["probs"] for b in batches])
                passes.append(time.perf_counter() - started)
            rate = len(items) / min(passes)
            base, reference = base or rate, probs if reference is None else reference
            print(f"{name:56s} {rate:7.2f} samples/s  {rate / base:.2f}x fp32  agreement {(probs.argmax(1) == reference.argmax(1)).mean():.3f}  "
                  f"{path.stat().st_size / 2**20:.0f} MB", flush=True)

if __name__ == "__main__":
    sys.exit(main())
