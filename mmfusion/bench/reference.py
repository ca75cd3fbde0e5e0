"""THE ORIGINAL DESIGN, kept only as the baseline of `mmfusion bench`. Nothing trains or serves with it.

What it did, and what the optimized path (`collate` + `TextEncoder` + `LengthBucketBatchSampler`) does instead:
- every dialogue padded to `max_chunks` x `chunk_len` tokens  -> pad per batch, to its most chunks and longest chunk;
- every chunk encoded, empty ones too, eager attention        -> only real chunks, packed into one encoder batch, SDPA;
- fp32 everywhere                                             -> bf16 autocast where the CPU/GPU has it;
- torch's default AdamW (CPU: a for-loop over parameters)      -> fused AdamW (`optim.adamw_impl`);
- the backbone's own dropout (0.1, attention probabilities too) -> no attention dropout (SDPA's fused kernel), cheaper
  dropout masks (`model.text_attention_dropout`, `model.fast_dropout`);
- the dialogue vector is the UNMASKED mean over all chunks    -> the mean over real chunks. The unmasked mean shrinks
  the text vector of a short dialogue (2 real chunks of 8: x 2/8), so it is a different function, not only slower.

`reference_model(model)` copies a model's weights into this design, so both paths start from the same weights;
with `chunk_mean="masked"` the two give the same logits (tests/test_bench.py), which isolates the speed-up.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmfusion.data.datamodule import collate
from mmfusion.encoders import masked_chunk_mean
from mmfusion.encoders.text import set_dropout
from mmfusion.modeling.classifier import MultimodalClassifier


def reference_collate(items: list[dict], max_chunks: int, chunk_len: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Like `collate`, but every sample padded to (max_chunks, chunk_len) whatever the batch holds."""
    batch = collate(items, pad_id)
    batch.pop("chunk_embeddings", None)  # the original design always ran the encoder
    _, c, t = batch["input_ids"].shape
    grow = (0, chunk_len - t, 0, max_chunks - c)  # (T right, C right)
    batch["input_ids"] = F.pad(batch["input_ids"], grow, value=pad_id)
    batch["attention_mask"] = F.pad(batch["attention_mask"], grow, value=0)
    batch["chunk_mask"] = F.pad(batch["chunk_mask"], (0, max_chunks - c), value=0)
    batch["chunk_column"] = F.pad(batch["chunk_column"], (0, max_chunks - c), value=0)  # several text columns
    return batch


class ReferenceTextEncoder(nn.Module):
    """Encodes all B x C chunks at full length; pools tokens with the attention mask, chunks WITHOUT the chunk mask."""

    def __init__(self, backbone: nn.Module, chunk_mean: Literal["unmasked", "masked"] = "unmasked") -> None:
        super().__init__()
        self.backbone, self.chunk_mean = backbone, chunk_mean
        self.hidden_size: int = backbone.config.hidden_size

    def forward(self, input_ids, attention_mask, chunk_mask) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, t = input_ids.shape
        att = attention_mask.reshape(b * c, t)
        hidden = self.backbone(input_ids=input_ids.reshape(b * c, t), attention_mask=att).last_hidden_state  # (B*C, T, H)
        m = att.to(hidden.dtype).unsqueeze(-1)
        chunks = ((hidden * m).sum(1) / m.sum(1).clamp_min(1.0)).reshape(b, c, -1)  # (B, C, H); 0 at empty chunks
        pooled = chunks.mean(1) if self.chunk_mean == "unmasked" else masked_chunk_mean(chunks, chunk_mask)
        return pooled, chunks


def reference_model(model: MultimodalClassifier, chunk_mean: Literal["unmasked", "masked"] = "unmasked", attention: str = "eager",
                    dropout: tuple[float, float] | None = None) -> MultimodalClassifier:
    """A copy of `model` (same weights, independent parameters) whose text encoder follows the original design.

    `dropout`: the backbone's own (hidden, attention-probability) dropout, restored with torch's dropout; None keeps
    the model's."""
    ref = copy.deepcopy(model)
    backbone = ref.text_encoder.backbone
    if dropout is not None:
        set_dropout(backbone, *dropout, fast=False)
    backbone.set_attn_implementation(attention)  # eager: what a BERT ran before SDPA; it copes with empty chunks
    ref.text_encoder = ReferenceTextEncoder(backbone, chunk_mean)  # (requires_grad flags are copied with the weights)
    return ref.train(model.training)
