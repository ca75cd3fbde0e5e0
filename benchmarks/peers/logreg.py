"""The linear baseline every fusion model must beat on a real table, on the same split and the same packaged MiniLM.

Frozen all-MiniLM-L6-v2, mean-pooled over tokens (each text column embedded on its own, then concatenated) + one-hot
categories + sign·log1p numbers (standardised) -> logistic regression (C chosen by 5-fold CV on train).

    python benchmarks/peers/logreg.py --data data/clothing [--drop Rating]

It reads `manifest.json` of `mmfusion datasets fetch` for the column roles and prints, for all columns and again
without the `--drop` columns: text+tab, text+tab with the text columns' vectors averaged (not side by side), tab-only
(and text-only) accuracy, macro-F1, balanced accuracy and AUROC on the test split, with the CPU and the times. It
writes nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from transformers import AutoModel, AutoTokenizer

from mmfusion.encoders.text import resolve_encoder
from mmfusion.training.hardware import describe

warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")  # l1_ratios / legacy-attribute notices of 1.9


@torch.inference_mode()
def embed(texts: list[str], tokenizer, model, batch: int = 64, max_len: int = 256) -> np.ndarray:
    """Mean over real tokens; an empty text -> zeros."""
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
    for start in range(0, len(texts), batch):
        idx = order[start:start + batch]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # (B, L, H)
        m = enc["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
        out[idx] = ((hidden * m).sum(1) / m.sum(1).clamp_min(1)).numpy()
    empty = np.array([not t.strip() for t in texts])
    out[empty] = 0.0
    return out


def text_features(train: pd.DataFrame, test: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    path = resolve_encoder("all-MiniLM-L6-v2")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    emb = lambda f: np.hstack([embed(f[c].fillna("").astype(str).tolist(), tokenizer, model) for c in columns])  # noqa: E731
    return emb(train), emb(test)


def averaged_columns(text: np.ndarray, n_columns: int) -> np.ndarray:
    """(N, K*H) column embeddings side by side -> (N, H): their mean over the non-empty columns of each row (what
    pooling every column's chunks together gives a linear model; `model.column_pooling=joint`)."""
    parts = text.reshape(len(text), n_columns, -1)  # (N, K, H)
    present = (np.abs(parts).sum(-1, keepdims=True) > 0).sum(1)  # (N, 1)
    return parts.sum(1) / np.maximum(present, 1)


def tab_features(train: pd.DataFrame, test: pd.DataFrame, cats: list[str], nums: list[str]) -> tuple[np.ndarray, np.ndarray]:
    parts_train, parts_test = [np.zeros((len(train), 0))], [np.zeros((len(test), 0))]
    if cats:
        onehot = OneHotEncoder(handle_unknown="ignore", min_frequency=2, sparse_output=False)
        parts_train.append(onehot.fit_transform(train[cats].astype(str)))
        parts_test.append(onehot.transform(test[cats].astype(str)))
    if nums:
        log = lambda f: np.sign(f) * np.log1p(np.abs(f))  # noqa: E731
        scaler = StandardScaler()
        parts_train.append(scaler.fit_transform(log(train[nums].astype(float).fillna(0).to_numpy())))
        parts_test.append(scaler.transform(log(test[nums].astype(float).fillna(0).to_numpy())))
    return np.hstack(parts_train), np.hstack(parts_test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder written by `mmfusion datasets fetch`")
    ap.add_argument("--drop", nargs="*", default=["Rating"], help="tabular columns left out in the second set of rows")
    args = ap.parse_args()
    folder = Path(args.data)
    roles = json.loads((folder / "manifest.json").read_text())
    train, test = pd.read_csv(folder / "train.csv"), pd.read_csv(folder / "test.csv")
    y_train, y_test = train[roles["label_column"]].to_numpy(), test[roles["label_column"]].to_numpy()
    print(f"{folder}: {len(train)} train / {len(test)} test | {describe()} | python {platform.python_version()}")
    started = time.perf_counter()
    text_train, text_test = text_features(train, test, roles["text_columns"])
    print(f"embedding {roles['text_columns']} with the packaged MiniLM: {time.perf_counter() - started:.0f} s")
    for drop in ([], args.drop):
        cats = [c for c in roles["categorical_columns"] if c not in drop]
        nums = [c for c in roles["numeric_columns"] if c not in drop]
        tab_train, tab_test = tab_features(train, test, cats, nums)
        k = len(roles["text_columns"])
        averaged = {} if k < 2 else {"text+tab, text columns averaged": (np.hstack([averaged_columns(text_train, k), tab_train]),
                                                                         np.hstack([averaged_columns(text_test, k), tab_test]))}
        for what, (a, b) in {"text+tab": (np.hstack([text_train, tab_train]), np.hstack([text_test, tab_test])), **averaged,
                             "tab-only": (tab_train, tab_test), "text-only": (text_train, text_test)}.items():
            if a.shape[1] == 0 or (what == "text-only" and drop):
                continue
            t0 = time.perf_counter()
            clf = LogisticRegressionCV(Cs=8, cv=5, max_iter=3000, scoring="accuracy").fit(a, y_train)
            prob = clf.predict_proba(b)[:, 1]
            pred = (prob >= 0.5).astype(int)
            print(f"logreg {what:9s} drop={drop}: accuracy {accuracy_score(y_test, pred):.4f}  "
                  f"macro-F1 {f1_score(y_test, pred, average='macro'):.4f}  balanced accuracy "
                  f"{balanced_accuracy_score(y_test, pred):.4f}  AUROC {roc_auc_score(y_test, prob):.4f}  fit {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
