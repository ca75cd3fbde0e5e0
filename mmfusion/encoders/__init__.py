from mmfusion.encoders.tabular import TabularEncoder
from mmfusion.encoders.text import TextEncoder, load_text_backbone, load_tokenizer, masked_chunk_mean, resolve_encoder

__all__ = ["TabularEncoder", "TextEncoder", "load_text_backbone", "load_tokenizer", "masked_chunk_mean", "resolve_encoder"]
