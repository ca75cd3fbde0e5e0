"""A trained model as a folder of safe files (no pickle), and loading it back for scoring.

    config.yaml          the resolved config
    preprocessing.json   tabular scaling, category vocabularies, classes
    model.safetensors    all weights
    text_encoder/        encoder config + tokenizer files (the weights are in model.safetensors)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file, save_file

from mmfusion.config import Config, build_config, to_yaml
from mmfusion.data.chunking import DialogueChunker
from mmfusion.data.datamodule import collate
from mmfusion.data.tabular import TabularPreprocessor
from mmfusion.model import MultimodalClassifier, build_model


def save_bundle(path: str | Path, cfg: Config, model: MultimodalClassifier, pre: TabularPreprocessor, tokenizer) -> Path:
    path = Path(path)
    (path / "text_encoder").mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(to_yaml(cfg))
    pre.save(path / "preprocessing.json")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    model.text_encoder.backbone.config.save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "text_encoder")
    return path


class Predictor:
    """Scores raw rows (a DataFrame with the training columns) with a saved bundle."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(path)
        self.cfg = build_config(yaml.safe_load((path / "config.yaml").read_text()), str(path / "config.yaml"))
        self.pre = TabularPreprocessor.load(path / "preprocessing.json")
        self.tokenizer = AutoTokenizer.from_pretrained(path / "text_encoder")
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(path / "text_encoder"), attn_implementation="sdpa")
        self.model = build_model(self.cfg.model, backbone, self.pre.n_numeric_features, self.pre.cardinalities, len(self.pre.classes))
        self.model.load_state_dict(load_file(str(path / "model.safetensors")))
        self.model.eval()
        self.chunker = DialogueChunker(self.tokenizer, self.cfg.data.max_chunks, self.cfg.data.chunk_len)

    def batch(self, frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        numeric, categorical = self.pre.transform(frame)
        chunks = self.chunker(frame[self.pre.text_column].tolist())
        items = [{"chunks": c, "numeric": numeric[i], "categorical": categorical[i], "label": 0, "modality": -1, "index": i} for i, c in enumerate(chunks)]
        return collate(items, self.tokenizer.pad_token_id or 0)

    @torch.inference_mode()
    def predict(self, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
        rows = []
        for start in range(0, len(frame), batch_size):
            part = frame.iloc[start : start + batch_size]
            b = self.batch(part)
            out = self.model(b["input_ids"], b["attention_mask"], b["chunk_mask"], b["numeric"], b["categorical"])
            probs = out.logits.float().softmax(-1).numpy()
            df = pd.DataFrame({"pred": np.asarray(self.pre.classes)[probs.argmax(1)]})
            for k, c in enumerate(self.pre.classes):
                df[f"prob_{c}"] = probs[:, k]
            df["w_text"], df["w_tab"] = out.modality_weights[:, 0].numpy(), out.modality_weights[:, 1].numpy()
            rows.append(df)
        result = pd.concat(rows, ignore_index=True)
        if self.pre.id_column and self.pre.id_column in frame.columns:
            result.insert(0, "id", frame[self.pre.id_column].astype(str).to_numpy())
        return result
