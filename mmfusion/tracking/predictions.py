"""The predictions table of a run: one row per sample of a split, written here and nowhere else.

Columns, in order: id, label, pred, prob_<class>..., w_text, w_tab[, expert_<i>...], drop_text, drop_tab, faithful
[, true_modality]. A run logs the val and test tables as `predictions/<split>.csv` (`contract.predictions_path`);
inspection, compare, export and reproduce read them back by these names.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
import torch

from mmfusion.modeling.metrics import faithful_rows
from mmfusion.tracking.contract import MODALITY_NAMES, Artifact, predictions_path

if TYPE_CHECKING:
    from mmfusion.data.datamodule import PreparedData

ID, LABEL, PRED = "id", "label", "pred"
PROB_PREFIX, EXPERT_PREFIX = "prob_", "expert_"
W_TEXT, W_TAB = "w_text", "w_tab"
DROP_TEXT, DROP_TAB, FAITHFUL = "drop_text", "drop_tab", "faithful"
TRUE_MODALITY = "true_modality"
LOGGED_SPLITS = ("test", "val")  # the train split's table feeds the plots only


def table(outputs: dict[str, torch.Tensor], data: "PreparedData", split: str) -> pd.DataFrame:
    """A split's evaluation outputs (`FitResult.outputs[split]`: index, label, probs, weights[, experts], drop_text,
    drop_tab[, modality]) -> its predictions table."""
    classes = data.preprocessor.classes
    idx = outputs["index"].numpy()
    probs = outputs["probs"].numpy()
    df = pd.DataFrame({ID: [data.splits[split].ids[i] for i in idx], LABEL: [classes[i] for i in outputs["label"].numpy()], PRED: [classes[i] for i in probs.argmax(1)]})
    for k, c in enumerate(classes):
        df[f"{PROB_PREFIX}{c}"] = probs[:, k]
    df[W_TEXT], df[W_TAB] = outputs["weights"][:, 0].numpy(), outputs["weights"][:, 1].numpy()
    if "experts" in outputs:
        for e in range(outputs["experts"].shape[1]):
            df[f"{EXPERT_PREFIX}{e}"] = outputs["experts"][:, e].numpy()
    # the faithfulness check per sample: how much P(true class) falls without the text / the table, and whether the
    # modality the weight prefers is the one whose removal hurts more
    df[DROP_TEXT], df[DROP_TAB] = outputs["drop_text"].numpy(), outputs["drop_tab"].numpy()
    df[FAITHFUL] = faithful_rows(outputs["weights"][:, 0], outputs["drop_text"], outputs["drop_tab"]).numpy()
    if data.has_modality:
        df[TRUE_MODALITY] = [MODALITY_NAMES.get(int(m), "unknown") for m in outputs["modality"].numpy()]
    return df


def served_columns(frame: pd.DataFrame) -> list[str]:
    """The columns the served model returns (the pyfunc signature's outputs)."""
    return [ID, PRED, *[c for c in frame.columns if c.startswith(PROB_PREFIX)], W_TEXT, W_TAB]


def log_tables(frames: dict[str, pd.DataFrame]) -> list[str]:
    """Log the val and test tables to the active run. -> their artifact paths."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / Artifact.PREDICTIONS_DIR
        folder.mkdir()
        for split in LOGGED_SPLITS:
            frames[split].to_csv(Path(tmp) / predictions_path(split), index=False)
        mlflow.log_artifacts(str(folder), Artifact.PREDICTIONS_DIR)
    return [predictions_path(s) for s in LOGGED_SPLITS]
