"""Exporting a model as two ONNX graphs that the scorer drives, so that padding chunks are never encoded.

    export_packed(model, batch, dir)  -> PackedFiles(encoder, head), laid out as the logged model is (dir/model.onnx,
                                      dir/extra_files/head.onnx: `Artifact.ONNX_HEAD`):
        encoder  (N, T) token ids + attention mask of real chunks -> (N, H) chunk embeddings (masked token mean);
                 the whole text backbone (model.text_encoder), dynamic N and T
        head     chunk embeddings (B, C, H) + chunk_mask (B, C) + numeric + categorical [+ chunk_column (B, C)]
                 -> probs, modality_weights[, expert_weights]; dynamic B and C

`mmfusion.serving.onnx_session.PackedScorer` selects a batch's real chunks, encodes them in length-sorted groups
each padded to its own longest chunk, scatters them back to (B, C, H) and runs the head: what
`TextEncoder.encode_chunks` does in PyTorch. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from mmfusion.export import onnx as single  # _export_copy looked up at call time (tests replace it)
from mmfusion.export.onnx import COLUMN_INPUT, OPSET, OUTPUTS, _tensor
from mmfusion.tracking.contract import Artifact

if TYPE_CHECKING:
    from mmfusion.modeling.classifier import MultimodalClassifier

ENCODER_INPUTS, ENCODER_OUTPUT = ("input_ids", "attention_mask"), "chunk_embeddings"
HEAD_INPUTS = ("chunk_embeddings", "chunk_mask", "numeric", "categorical")


class PackedFiles(NamedTuple):
    encoder: Path
    head: Path


def head_input_names(model: "MultimodalClassifier") -> tuple[str, ...]:
    """The head graph's inputs: `HEAD_INPUTS`, plus `chunk_column` when the model embeds each chunk's text column."""
    return (*HEAD_INPUTS, COLUMN_INPUT) if getattr(model, "column_embedding", None) is not None else HEAD_INPUTS


def _examples(model: "MultimodalClassifier", batch: dict) -> tuple[tuple, tuple]:
    """Example inputs of both graphs from one collate() batch, every dynamic axis >= 2 (a size-1 axis could be baked
    static): at least 2 real chunks of at least 2 tokens, at least 2 rows of at least 2 chunks."""
    import torch

    ids, att = _tensor(batch["input_ids"]), _tensor(batch["attention_mask"])  # (B, C, T)
    b, c, t = ids.shape
    real = _tensor(batch["chunk_mask"]).reshape(-1).nonzero().squeeze(-1)
    flat_ids, flat_att = ids.reshape(b * c, t)[real], att.reshape(b * c, t)[real]  # (N, T) real chunks
    if len(flat_ids) < 2 or t < 2:  # a batch without (enough) text: two made-up chunks of different lengths
        flat_ids = torch.tensor([[1, 2, 3], [1, 3, 0]])
        flat_att = (flat_ids != 0).long()
    encoder_args = (flat_ids, flat_att)
    rows = max(2, b)
    chunks = max(2, c)
    hidden = model.text_encoder.hidden_size
    emb = torch.randn(rows, chunks, hidden)
    cmask = torch.ones(rows, chunks, dtype=torch.long)
    cmask[0, -1] = 0  # a padding chunk
    cmask[-1] = 0  # a row without text
    emb = emb * cmask.unsqueeze(-1)
    pick = lambda k: _tensor(batch[k])[torch.arange(rows) % b]  # noqa: E731  (repeat rows to reach 2)
    cols = torch.zeros(rows, chunks, dtype=torch.long)
    n_cols = model.column_embedding.num_embeddings if model.column_embedding is not None else 1
    cols[:, 1:] = torch.arange(1, chunks) % n_cols
    values = {"chunk_embeddings": emb, "chunk_mask": cmask, "numeric": pick("numeric"), "categorical": pick("categorical"), COLUMN_INPUT: cols}
    return encoder_args, tuple(values[k] for k in head_input_names(model))


def export_packed(model: "MultimodalClassifier", example_batch: dict, directory: str | Path) -> PackedFiles:
    """Export the model (eval, fp32, eager attention: a traceable copy; `model` is left as it was) as the encoder and
    head graphs under `directory` (model.onnx, extra_files/head.onnx). TorchScript exporter: both graphs are free of
    data-dependent control flow (the packing lives in the scorer). `check_parity` is the proof."""
    import torch
    from torch import nn

    copy_ = single._export_copy(model)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text = copy_.text_encoder

        def forward(self, input_ids, attention_mask):
            return self.text.encode(input_ids, attention_mask).float()  # (N, H)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = copy_

        def forward(self, chunk_embeddings, chunk_mask, numeric, categorical, chunk_column=None):
            out = self.inner(None, None, chunk_mask, numeric, categorical, chunk_embeddings=chunk_embeddings, chunk_column=chunk_column)
            outs = (out.logits.float().softmax(-1), out.modality_weights.float())
            return outs if out.expert_weights is None else (*outs, out.expert_weights.float())

    directory = Path(directory)
    files = PackedFiles(directory / "model.onnx", directory / Artifact.ONNX_HEAD)
    files.head.parent.mkdir(parents=True, exist_ok=True)
    encoder_args, head_args = _examples(copy_, example_batch)
    head_names = head_input_names(copy_)
    encoder, head = Encoder().eval(), Head().eval()
    with torch.no_grad():
        n_out = len(head(*head_args))
    outputs = list(OUTPUTS[:n_out])
    head_axes = {"chunk_embeddings": {0: "batch", 1: "chunks"}, "chunk_mask": {0: "batch", 1: "chunks"}, "numeric": {0: "batch"}, "categorical": {0: "batch"},
                 COLUMN_INPUT: {0: "batch", 1: "chunks"}, **{n: {0: "batch"} for n in outputs}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; parity is the real check
        torch.onnx.export(encoder, encoder_args, str(files.encoder), input_names=list(ENCODER_INPUTS), output_names=[ENCODER_OUTPUT], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": {0: "chunks", 1: "tokens"}, "attention_mask": {0: "chunks", 1: "tokens"}, ENCODER_OUTPUT: {0: "chunks"}})
        torch.onnx.export(head, head_args, str(files.head), input_names=list(head_names), output_names=outputs, opset_version=OPSET, dynamo=False,
                          dynamic_axes={k: v for k, v in head_axes.items() if k in (*head_names, *outputs)})
    return files
