"""Proof that an exported model is numerically equal to PyTorch, and int8 figures against fp32.

    check_parity(model, scorer, bs)  max |ONNX - PyTorch| over held-out batches; raises ParityError above tolerance
    parity_batches(split, pad_id)    held-out batches covering the hard cases (padding, batch of one, no text)
    int8_report(fp32, int8, ...)     accuracy, agreement, size and time of the int8 model against the fp32 one
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmfusion.export.onnx import _tensor, input_names
from mmfusion.serving.onnx_scorer import OnnxScorer
from mmfusion.progress import progress

if TYPE_CHECKING:
    from mmfusion.data.datamodule import Split
    from mmfusion.modeling.classifier import MultimodalClassifier


class ParityError(RuntimeError):
    """The exported model does not reproduce PyTorch within tolerance: a bug, never to be shipped."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")  # NaN is never "equal"
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def check_parity(model: "MultimodalClassifier", scorer: OnnxScorer, batches: list[dict], tolerance: float = 1e-4) -> dict:
    """Run PyTorch (fp32, CPU, eval) and ONNX Runtime on each batch; -> report. Raises ParityError above tolerance."""
    import torch

    ref = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    was_training = ref.training
    ref.eval()
    diffs = {"probs": 0.0, "modality_weights": 0.0, "expert_weights": 0.0}
    rows, samples = [], 0
    try:
        with torch.inference_mode():
            for batch in progress(batches, "ONNX parity check", unit="batches"):
                x = {k: _tensor(batch[k]) for k in input_names(ref)}
                out = ref(**x)
                want = {"probs": out.logits.float().softmax(-1).numpy(), "modality_weights": out.modality_weights.float().numpy()}
                if out.expert_weights is not None:
                    want["expert_weights"] = out.expert_weights.float().numpy()
                got = scorer(x)
                row = {"batch_size": int(x["chunk_mask"].shape[0]), "chunks": int(x["chunk_mask"].shape[1]), "tokens": int(x["input_ids"].shape[2]),
                       "padded_chunks": int((x["chunk_mask"] == 0).sum()), "samples_without_text": int((x["chunk_mask"].sum(1) == 0).sum())}
                for key, value in want.items():
                    d = _max_abs(got[key], value) if key in got else float("inf")
                    row[f"max_abs_diff_{key}"] = d
                    diffs[key] = max(diffs[key], d)
                rows.append(row)
                samples += row["batch_size"]
    finally:
        ref.train(was_training)
    worst = max(diffs.values())
    report = {
        "max_abs_diff": worst,
        "max_abs_diff_probs": diffs["probs"],
        "max_abs_diff_weights": diffs["modality_weights"],
        **({"max_abs_diff_expert_weights": diffs["expert_weights"]} if any("max_abs_diff_expert_weights" in r for r in rows) else {}),
        "samples_checked": samples,
        "batches_checked": len(rows),
        "padded_chunks_checked": sum(r["padded_chunks"] for r in rows),
        "samples_without_text_checked": sum(r["samples_without_text"] for r in rows),
        "batch_of_one_checked": any(r["batch_size"] == 1 for r in rows),
        "tolerance": tolerance,
        "passed": bool(worst <= tolerance),
        "batches": rows,
    }
    if not report["passed"]:
        raise ParityError(f"ONNX export does not match PyTorch: max |difference| {worst:.3g} > tolerance {tolerance:g} (probs {diffs['probs']:.3g}, weights {diffs['modality_weights']:.3g})", report)
    return report


def parity_batches(split: "Split", pad_id: int = 0, batch_size: int = 16) -> list[dict]:
    """Held-out batches that cover the hard cases: a regular batch with padded chunks, a batch of one (the longest
    dialogue), a sample with no text beside a full one, and a sample with no text alone. When the split has no
    sample without text, one is made by clearing a sample's dialogue (what scoring an empty dialogue gives)."""
    from mmfusion.data.datamodule import SplitDataset, collate

    ds = SplitDataset(split)
    items = [{k: v for k, v in ds[i].items() if k != "chunk_embeddings"} for i in range(len(ds))]
    if not items:
        return []
    size = lambda it: (len(it["chunks"]), sum(map(len, it["chunks"])))  # noqa: E731
    order = sorted(range(len(items)), key=lambda i: size(items[i]))
    longest = items[order[-1]]
    empty = next((it for it in items if not it["chunks"]), None) or {**items[0], "chunks": []}
    regular = items[:batch_size] if len(items) >= 2 else [items[0], longest]
    return [collate(b, pad_id) for b in (regular, [longest], [empty, longest], [empty], [items[order[0]], longest])]


def score_all(scorer: OnnxScorer, batches: list[dict]) -> tuple[dict[str, np.ndarray], float]:
    """Score every batch -> (outputs concatenated over the batches, seconds)."""
    started = time.perf_counter()
    parts = [scorer(b) for b in batches]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, time.perf_counter() - started


def int8_report(fp32: OnnxScorer, int8: OnnxScorer, batches: list[dict], fp32_path: Path, int8_path: Path) -> dict:
    """Accuracy figures of the int8 model against the fp32 one (which equals PyTorch) on a whole held-out split."""
    (a, seconds_a), (b, seconds_b) = score_all(fp32, batches), score_all(int8, batches)
    labels = np.concatenate([np.asarray(batch["label"]) for batch in batches])
    n = len(labels)
    return {
        "samples": n,
        "max_abs_diff_probs": _max_abs(a["probs"], b["probs"]),
        "mean_abs_diff_probs": float(np.abs(a["probs"] - b["probs"]).mean()) if n else 0.0,
        "max_abs_diff_weights": _max_abs(a["modality_weights"], b["modality_weights"]),
        "prediction_agreement": float((a["probs"].argmax(1) == b["probs"].argmax(1)).mean()) if n else 1.0,
        "accuracy_fp32": float((a["probs"].argmax(1) == labels).mean()) if n else float("nan"),
        "accuracy_int8": float((b["probs"].argmax(1) == labels).mean()) if n else float("nan"),
        "size_mb_fp32": fp32_path.stat().st_size / 2**20,
        "size_mb_int8": int8_path.stat().st_size / 2**20,
        "seconds_fp32": seconds_a,
        "seconds_int8": seconds_b,
    }
