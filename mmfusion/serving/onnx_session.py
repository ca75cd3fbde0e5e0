"""onnxruntime sessions over exported graphs, fed collate()-style batches (numpy arrays or torch tensors; no torch).

    OnnxScorer(path)                  one graph: the single-graph export of older runs, or either graph of a pair
    PackedScorer(encoder, head)       the packed export: only real chunks are encoded, in length-sorted groups each
                                      padded to its own longest chunk, then scattered back to (B, C, H) for the head
    scorer(batch) -> {"probs", "modality_weights"[, "expert_weights"]} for both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from mmfusion.errors import DataError
from mmfusion.tracking.artifacts import ArtifactError

ONNX_DTYPES = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(double)": np.float64}  # input type -> numpy
GROUP_TOKENS = 4096  # chunks x tokens per encoder call: large enough for efficient GEMMs, small enough to pad little


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


class OnnxScorer:
    """An onnxruntime session over one exported graph: `scorer(batch) -> {output name: array}`; extra keys ignored."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise ArtifactError(f"{path}: not a loadable ONNX model ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def _feed(self, batch: dict) -> dict[str, np.ndarray]:
        feed = {}
        for name, info in self.inputs.items():
            if name not in batch:
                raise DataError(f"ONNX input {name!r} is missing from the batch (has: {', '.join(batch)})")
            value = _numpy(batch[name])
            value = np.ascontiguousarray(value, dtype=ONNX_DTYPES.get(info.type, value.dtype))
            for axis, (want, got) in enumerate(zip(info.shape, value.shape)):
                if isinstance(want, int) and want != got:
                    raise ArtifactError(
                        f"ONNX input {name!r} has {got} values on axis {axis} but the model expects {want}: "
                        "the preprocessing does not match the exported model"
                    )
            feed[name] = value
        return feed

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, self._feed(batch))))


def length_groups(lengths: np.ndarray, budget: int = GROUP_TOKENS) -> list[np.ndarray]:
    """Positions into `lengths` (N,), sorted by length and cut into groups of at most `budget` padded tokens (a
    group pads to its longest member; one chunk longer than the budget is a group of its own)."""
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or (end + 1 - start) * lengths[order[end]] > budget:
            groups.append(order[start:end])
            start = end
    return groups


class PackedScorer:
    """The packed export's two graphs, driven so that padding chunks and most padding tokens are never encoded.

    Takes the same batches as `OnnxScorer` over a single-graph export (input_ids/attention_mask (B, C, T), chunk_mask
    (B, C), numeric, categorical[, chunk_column]) and gives the same outputs.
    """

    def __init__(self, encoder: str | Path, head: str | Path, threads: int | None = None, providers: list[str] | None = None, group_tokens: int = GROUP_TOKENS) -> None:
        self.encoder, self.head = OnnxScorer(encoder, threads, providers), OnnxScorer(head, threads, providers)
        self.group_tokens = group_tokens
        if set(self.encoder.inputs) != {"input_ids", "attention_mask"} or "input_ids" in self.head.inputs:
            raise ArtifactError(f"{encoder} + {head}: not the encoder and head graphs of a packed export")
        emb = self.head.inputs.get("chunk_embeddings")  # absent where the fusion reads no text (tab_only): nothing to encode
        self.reads_text = emb is not None
        self.hidden = emb.shape[2] if emb is not None and isinstance(emb.shape[2], int) else None
        tokens = {k: self.encoder.inputs[k] for k in ("input_ids", "attention_mask")}
        self.inputs = {**tokens, **{k: v for k, v in self.head.inputs.items() if k != "chunk_embeddings"}}
        self.output_names = self.head.output_names
        self.metadata = self.head.metadata

    def embed(self, input_ids, attention_mask, chunk_mask) -> np.ndarray:
        """(B, C, T) tokens + (B, C) chunk mask -> (B, C, H) chunk embeddings, zeros at padding chunks."""
        ids, att, cmask = _numpy(input_ids), _numpy(attention_mask), _numpy(chunk_mask)
        b, c, t = ids.shape
        flat_ids, flat_att = ids.reshape(b * c, t), att.reshape(b * c, t)  # (B*C, T)
        real = np.flatnonzero(cmask.reshape(-1))
        # where each real chunk's last real token ends: trimming there drops only masked positions, whatever the layout
        ends = ((flat_att[real] != 0) * np.arange(1, t + 1)).max(1) if len(real) else np.zeros(0, np.int64)  # (N,)
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for group in length_groups(np.maximum(ends, 1), self.group_tokens):
            rows, width = real[group], max(1, int(ends[group].max()))
            out = self.encoder({"input_ids": flat_ids[rows, :width], "attention_mask": flat_att[rows, :width]})["chunk_embeddings"]  # (g, H)
            parts.append((rows, out))
        hidden = self.hidden or (parts[0][1].shape[1] if parts else None)
        if hidden is None:
            raise ArtifactError("the head graph does not state its hidden size and the batch has no text to learn it from")
        emb = np.zeros((b * c, hidden), np.float32)
        for rows, out in parts:
            emb[rows] = out
        return emb.reshape(b, c, hidden)  # (B, C, H)

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        if not self.reads_text:
            return self.head(batch)
        for name in ("input_ids", "attention_mask", "chunk_mask"):
            if name not in batch:
                raise DataError(f"ONNX input {name!r} is missing from the batch (has: {', '.join(batch)})")
        emb = self.embed(batch["input_ids"], batch["attention_mask"], batch["chunk_mask"])
        return self.head({**batch, "chunk_embeddings": emb})
