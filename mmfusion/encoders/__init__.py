"""The shared encoders: the text encoder (any Hugging Face BERT-style model, chunked) and the tabular MLP."""

from mmfusion.encoders.tabular import TabularEncoder
from mmfusion.encoders.text import AttentionChunkPool, TextEncoder, load_text_backbone, load_tokenizer, masked_chunk_mean, resolve_encoder

__all__ = ["AttentionChunkPool", "TabularEncoder", "TextEncoder", "load_text_backbone", "load_tokenizer", "masked_chunk_mean", "resolve_encoder"]
