"""The bad-input table: every kind of bad input to every command is exit code 2 with exactly one `error:` line, no
traceback, no MLflow run left RUNNING, and the finished run the rows point at unchanged (status, params, tags,
artifacts, logged models).

Rows run `mmfusion.cli.main(argv)` in-process. One tiny run (with its ONNX export and PyTorch bundle) is trained once
for the module; rows that corrupt its files restore them afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlparse

import mlflow
import pytest
import yaml

from mmfusion.cli import main as cli
from mmfusion.data import synthetic

TINY = ["data.synthetic.n_samples=120", "data.max_chunks=4", "data.chunk_len=32", "model.fusion_dim=16", "model.tab_hidden=16", "model.tab_dim=16",
        "trainer.max_epochs=1", "trainer.batch_size=16", "trainer.enable_progress_bar=false", "trainer.precision=32-true", "data.cache_dir=null"]


def _local(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)


@pytest.fixture(scope="module")
def finished(tiny_bert, mlflow_module_uri) -> str:
    """One tiny FINISHED run with an ONNX export and a bundle: the run every row that reads a run points at."""
    from mmfusion.config import load_config
    from mmfusion.jobs.train import train

    return train(load_config(None, [f"model.text_encoder={tiny_bert}", *TINY])).run_id


@dataclass
class Ctx:
    run_id: str
    bert: str
    tmp: Path
    restore: list[tuple[Path, bytes | None]] = field(default_factory=list)

    def file(self, name: str, text: str = "") -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def yaml(self, name: str, data) -> Path:
        return self.file(name, yaml.safe_dump(data))

    def rows(self, name: str, n: int = 6, **changes) -> Path:
        """A table with the synthetic data's columns (what the tiny run was trained on), optionally altered."""
        frame = synthetic.make_synthetic(synthetic.SyntheticSpec(n_samples=20), seed=0).head(n)
        for col, value in changes.items():
            if value is None:
                frame = frame.drop(columns=[col])
            else:
                frame[col] = frame[col].astype(object)
                frame.loc[frame.index[: len(value)], col] = value
        path = self.tmp / name
        frame.to_csv(path, index=False)
        return path

    def model_dir(self, name: str) -> Path:
        from mmfusion.serving.logged_models import logged_model_id

        client = mlflow.MlflowClient()
        return _local(client.get_logged_model(logged_model_id(self.run_id, name)).artifact_location)

    def artifacts(self) -> Path:
        return _local(mlflow.MlflowClient().get_run(self.run_id).info.artifact_uri)

    def change(self, path: Path, data: bytes | None) -> None:
        """Overwrite (or, with None, delete) a stored file; the original comes back after the row."""
        self.restore.append((path, path.read_bytes() if path.exists() else None))
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)

    def bundle_file(self, rel: str) -> Path:
        return next(self.model_dir("model").rglob("model.safetensors")).parent / rel


def _garbage(rel_file: str, data: bytes | None = b"\x00not what it was\xff") -> Callable[[Ctx], None]:
    return lambda c: c.change(c.bundle_file(rel_file), data)


def _run_artifact(rel: str, data: bytes | None) -> Callable[[Ctx], None]:
    return lambda c: c.change(c.artifacts() / rel, data)


def _onnx_model(data: bytes | None) -> Callable[[Ctx], None]:
    return lambda c: c.change(c.model_dir("model_onnx") / "model.onnx", data)


def _study(space) -> Callable[[Ctx], None]:
    return lambda c: c.yaml("study.yaml", {"study": {"n_trials": 1, "search_space": space}})


def _table(**changes) -> Callable[[Ctx], None]:
    return lambda c: c.rows("t.csv", **changes)


NUM, CAT = synthetic.NUMERIC_COLUMNS, synthetic.CATEGORICAL_COLUMNS
TABLE = ["data.source=table", "data.path={tmp}/t.csv", "data.label_column=label", "data.id_column=id", f"data.numeric_columns=[{','.join(NUM)}]", f"data.categorical_columns=[{','.join(CAT)}]"]
TRAIN = ["train", "model.text_encoder={bert}", *TINY]
# (id, argv, setup): {run} is the finished run, {tmp} the row's folder, {bert} the tiny BERT, {file} a plain file
ROWS: list[tuple[str, list[str], Callable[[Ctx], None] | None]] = [
    # -- argparse
    ("no-command", [], None),
    ("unknown-command", ["frobnicate"], None),
    ("fusions-extra-argument", ["fusions", "--nope"], None),
    ("compare-without-source", ["compare"], None),
    ("inspect-top-not-a-number", ["inspect", "--run-id", "{run}", "--top", "many"], None),
    # -- config: keys, types, files
    ("unknown-key", ["config", "model.fusoin=gate"], None),
    ("unknown-section", ["config", "modle.fusion=gate"], None),
    ("wrong-type", ["config", "trainer.max_epochs=abc"], None),
    ("wrong-type-list", ["config", "data.numeric_columns=5"], None),
    ("override-not-key-value", ["config", "justtext"], None),
    ("override-bad-yaml", ["config", "model.fusion=[a"], None),
    ("override-into-a-value", ["config", "seed.x=1"], None),
    ("config-file-missing", ["config", "--config", "{tmp}/nope.yaml"], None),
    ("config-file-bad-yaml", ["config", "--config", "{tmp}/bad.yaml"], lambda c: c.file("bad.yaml", "model: [gate\n")),
    ("config-file-not-a-mapping", ["config", "--config", "{tmp}/list.yaml"], lambda c: c.file("list.yaml", "- a\n- b\n")),
    ("unknown-fusion", ["config", "model.fusion=nope"], None),
    ("unknown-precision", ["config", "trainer.precision=fp8"], None),
    ("odd-n-experts", ["config", "model.fusion=moe_topk", "model.n_experts=3"], None),  # the old flat key: checked for moe_topk only
    ("unknown-fusion-option", ["config", "model.fusion=moe", "model.fusion_options.n_experts=4"], None),
    ("bad-fusion-option-value", ["config", "model.fusion=moe-mlp-hard", "model.fusion_options.routing=sometimes"], None),
    ("unknown-preset", ["config", "model.fusion=moe-mlp-sometimes"], None),
    ("preset-of-another-variant", ["config", "model.fusion=gate", "model.fusion_preset=moe-mlp-hard"], None),
    ("option-in-both-forms", ["config", "model.fusion=moe", "model.router=mlp", "model.fusion_options.router=linear"], None),
    ("heads-not-dividing-fusion-dim", ["config", "model.fusion=attention", "model.fusion_options.heads=3"], None),
    ("table-without-path", ["config", "data.source=table"], None),
    # -- config: bounds
    ("seed-negative", ["config", "seed=-1"], None),
    ("seed-too-large", ["config", "seed=4294967296"], None),
    ("split-seed-negative", ["config", "data.split_seed=-5"], None),
    ("devices-zero", ["config", "trainer.devices=0"], None),
    ("devices-word", ["config", "trainer.devices=many"], None),
    ("num-nodes-zero", ["config", "trainer.num_nodes=0"], None),
    ("batch-size-zero", ["config", "trainer.batch_size=0"], None),
    ("eval-batch-size-zero", ["config", "trainer.eval_batch_size=0"], None),
    ("max-epochs-zero", ["config", "trainer.max_epochs=0"], None),
    ("max-chunks-zero", ["config", "data.max_chunks=0"], None),
    ("chunk-len-too-small", ["config", "data.chunk_len=4"], None),
    ("experiment-empty", ["config", "tracking.experiment=''"], None),
    ("experiment-control-char", ["config", 'tracking.experiment="a\\tb"'], None),
    ("lr-inf", ["config", "optim.lr=.inf"], None),
    ("lr-nan", ["config", "optim.lr=nan"], None),
    ("lr-zero", ["config", "optim.lr=0"], None),
    ("encoder-lr-negative", ["config", "optim.encoder_lr=-1e-5"], None),
    ("text-layers-negative", ["config", "model.train_text_layers=-1"], None),
    ("text-layers-not-a-number", ["config", "model.train_text_layers=top"], None),
    ("text-layers-contradict-the-old-spelling", ["config", "model.freeze_text_encoder=true", "model.train_text_layers=2"], None),
    ("class-weight-zero", ["config", "optim.class_weights=[1.0,0.0]"], None),
    ("class-weight-negative", ["config", "optim.class_weights=[1.0,-2.0]"], None),
    ("class-weight-inf", ["config", "optim.class_weights=[1.0,.inf]"], None),
    ("val-fraction-zero", ["config", "data.val_fraction=0"], None),
    ("test-fraction-one", ["config", "data.test_fraction=1"], None),
    ("fractions-sum-too-large", ["config", "data.val_fraction=0.5", "data.test_fraction=0.5"], None),
    ("dropout-one", ["config", "model.dropout=1"], None),
    ("clip-negative", ["config", "trainer.gradient_clip_val=-1"], None),
    ("output-dir-is-a-file", ["config", "trainer.output_dir={file}"], None),
    ("output-dir-under-a-file", ["config", "trainer.output_dir={file}/sub"], None),
    ("cache-dir-is-a-file", ["config", "data.cache_dir={file}"], None),
    # -- train: data and encoder
    ("train-unknown-key", [*TRAIN, "model.nope=1"], None),
    ("train-missing-data-file", [*TRAIN, *TABLE], None),
    ("train-unsupported-file-type", [*TRAIN, "data.source=table", "data.path={file}"], None),
    ("train-missing-column", [*TRAIN, *TABLE], _table(label=None)),
    ("train-non-numeric-values", [*TRAIN, *TABLE], _table(order_value=["cheap"])),
    ("train-inf-in-numeric-column", [*TRAIN, *TABLE], _table(order_value=[float("inf"), float("-inf")])),
    ("train-single-class", [*TRAIN, *TABLE], _table(label=[0] * 6)),
    ("train-missing-text-column-among-several", [*TRAIN, *TABLE, "data.text_columns=[dialogue,title]"], _table()),
    ("train-text-column-listed-twice", [*TRAIN, "data.text_columns=[dialogue,dialogue]"], None),
    ("train-unknown-numeric-transform", [*TRAIN, "data.numeric_transform=boxcox"], None),
    ("train-quantile-on-constant-column", [*TRAIN, *TABLE, "data.numeric_transform=quantile", "data.test_fraction=0.34"], _table(order_value=[5.0] * 6)),
    ("train-min-category-count-zero", [*TRAIN, "data.min_category_count=0"], None),
    ("train-class-weights-unknown-word", [*TRAIN, "optim.class_weights=inverse"], None),
    ("train-empty-table", [*TRAIN, *TABLE], lambda c: c.file("t.csv", "id,dialogue,label\n")),
    ("train-column-numeric-and-categorical", [*TRAIN, *TABLE[:4], "data.numeric_columns=[category]", "data.categorical_columns=[category]"], _table()),
    ("train-chunk-len-above-encoder-max", [*TRAIN, "data.chunk_len=256"], None),
    ("train-text-layers-above-encoder", ["train", *TINY, "model.train_text_layers=7"], None),  # the packaged MiniLM: 6 layers
    ("train-text-layers-above-tiny-encoder", [*TRAIN, "model.train_text_layers=3"], None),  # the tiny BERT: 2 layers
    ("train-unknown-text-encoder", ["train", *TINY, "model.text_encoder={tmp}/no_such_encoder"], None),
    ("train-class-weights-wrong-length", [*TRAIN, "optim.class_weights=[1,2,3]"], None),
    ("train-resume-unknown-id", ["train", "--resume", "0123456789abcdef0123456789abcdef"], None),
    ("train-resume-not-an-id", ["train", "--resume", "x' OR '1'='1"], None),
    # -- tune
    ("tune-without-study", ["tune", "model.fusion=gate"], None),
    ("tune-search-space-bad-key", ["tune", "--config", "{tmp}/study.yaml"], _study({"model.nope": {"type": "int", "low": 1, "high": 2}})),
    ("tune-search-space-bad-choice", ["tune", "--config", "{tmp}/study.yaml"], _study({"model.fusion": {"type": "categorical", "choices": ["gate", "nope"]}})),
    ("tune-search-space-bad-range", ["tune", "--config", "{tmp}/study.yaml"], _study({"optim.lr": {"type": "float", "low": 1.0, "high": 0.1}})),
    ("tune-never-ends", ["tune", "--config", "{tmp}/study.yaml"], lambda c: c.yaml("study.yaml", {"study": {"search_space": {"optim.lr": {"type": "float", "low": 0.1, "high": 1.0}}}})),
    # -- zoo
    ("zoo-bad-seeds", ["zoo", "--seeds", "abc"], None),
    ("zoo-repeated-seeds", ["zoo", "--seeds", "1,1"], None),
    ("zoo-unknown-variant", ["zoo", "--variants", "nope", "--seeds", "1"], None),
    ("zoo-unknown-fusion-in-config", ["zoo", "zoo.variants=[nope]"], None),
    ("zoo-out-is-a-file", ["zoo", "--seeds", "1", "--out", "{file}"], None),
    ("zoo-resume-unknown-id", ["zoo", "--seeds", "1", "--resume", "0123456789abcdef0123456789abcdef"], None),
    ("zoo-resume-not-a-zoo", ["zoo", "--seeds", "1", "--resume", "{run}"], None),
    # -- compare
    ("compare-unknown-experiment", ["compare", "--experiment", "no such experiment", "--no-log"], None),
    ("compare-parent-without-children", ["compare", "--parent", "{run}", "--no-log"], None),
    ("compare-parent-quote-injection", ["compare", "--parent", "x' OR '1'='1", "--no-log"], None),
    ("compare-runs-quote-injection", ["compare", "--runs", "{run}') OR attributes.run_id IN ('x", "--no-log"], None),
    ("compare-runs-unknown", ["compare", "--runs", "0123456789abcdef0123456789abcdef", "--no-log"], None),
    ("compare-study-unknown", ["compare", "--study", "no-such-study", "--no-log"], None),
    ("compare-study-quote-injection", ["compare", "--study", "x' OR tags.`mmfusion.fusion` LIKE '%", "--no-log"], None),
    ("compare-out-is-a-file", ["compare", "--runs", "{run}", "--out", "{file}", "--no-log"], None),
    ("compare-unknown-metric", ["compare", "--runs", "{run}", "--metrics", "nope", "--out", "{tmp}/cmp", "--no-log", "--no-weights"], None),
    ("compare-unknown-group-by", ["compare", "--runs", "{run}", "--group-by", "params.nope", "--out", "{tmp}/cmp", "--no-log"], None),
    # -- inspect
    ("inspect-unknown-run", ["inspect", "--run-id", "0123456789abcdef0123456789abcdef", "--output", "{tmp}/i"], None),
    ("inspect-top-zero", ["inspect", "--run-id", "{run}", "--top", "0"], None),
    ("inspect-output-is-a-file", ["inspect", "--run-id", "{run}", "--output", "{file}"], None),
    ("inspect-corrupted-predictions", ["inspect", "--run-id", "{run}", "--output", "{tmp}/i", "--no-log"], _run_artifact("predictions/test.csv", b"\x00\x01garbage\n")),
    ("inspect-corrupted-config-yaml", ["inspect", "--run-id", "{run}", "--output", "{tmp}/i", "--no-log"], _run_artifact("config.yaml", b"model: [unclosed\n")),
    ("inspect-corrupted-preprocessing-json", ["inspect", "--run-id", "{run}", "--output", "{tmp}/i", "--no-log"], _run_artifact("preprocessing.json", b"{not json")),
    ("inspect-missing-config-yaml", ["inspect", "--run-id", "{run}", "--output", "{tmp}/i", "--no-log"], _run_artifact("config.yaml", None)),
    # -- export
    ("export-unknown-run", ["export", "--run-id", "0123456789abcdef0123456789abcdef"], None),
    ("export-negative-tolerance", ["export", "--run-id", "{run}", "--tolerance", "-1"], None),
    ("export-nan-tolerance", ["export", "--run-id", "{run}", "--tolerance", "nan"], None),
    ("export-parity-fails", ["export", "--run-id", "{run}", "--tolerance", "1e-30"], None),
    ("export-corrupted-safetensors", ["export", "--run-id", "{run}"], _garbage("model.safetensors")),
    ("export-corrupted-config-yaml", ["export", "--run-id", "{run}"], _run_artifact("config.yaml", b"model: [unclosed\n")),
    ("reproduce-corrupted-config-yaml", ["reproduce", "--run-id", "{run}"], _run_artifact("config.yaml", b"- just\n- a list\n")),
    ("export-missing-bundle-file", ["export", "--run-id", "{run}"], _garbage("text_encoder/config.json", None)),
    # -- predict
    ("predict-unknown-run", ["predict", "--run-id", "0123456789abcdef0123456789abcdef", "--input", "{tmp}/rows.csv"], lambda c: c.rows("rows.csv")),
    ("predict-missing-input", ["predict", "--run-id", "{run}", "--input", "{tmp}/nope.csv"], None),
    ("predict-missing-column", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv"], lambda c: c.rows("rows.csv", order_value=None)),
    ("predict-inf-in-numeric-column", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv"], lambda c: c.rows("rows.csv", seller_rating=[float("inf")])),
    ("predict-onnx-inf-in-numeric-column", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv", "--onnx"], lambda c: c.rows("rows.csv", seller_rating=[float("-inf")])),
    ("predict-int8-without-onnx", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv", "--int8"], lambda c: c.rows("rows.csv")),
    ("predict-int8-not-exported", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv", "--onnx", "--int8"], lambda c: c.rows("rows.csv")),
    ("predict-output-is-a-folder", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv", "--output", "{tmp}"], lambda c: c.rows("rows.csv")),
    ("predict-corrupted-safetensors", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv"], lambda c: (c.rows("rows.csv"), _garbage("model.safetensors")(c))),
    ("predict-altered-bundle-json", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv"], lambda c: (c.rows("rows.csv"), _garbage("preprocessing.json", b'{"numeric": {}}')(c))),
    ("predict-file-added-to-bundle", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv"], lambda c: (c.rows("rows.csv"), _garbage("text_encoder/extra.json", b"{}")(c))),
    ("predict-missing-bundle-file", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv"], lambda c: (c.rows("rows.csv"), _garbage("config.yaml", None)(c))),
    ("predict-onnx-missing-model-file", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv", "--onnx"], lambda c: (c.rows("rows.csv"), _onnx_model(None)(c))),
    ("predict-onnx-altered-model-file", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv", "--onnx"], lambda c: (c.rows("rows.csv"), _onnx_model(b"not onnx")(c))),
    ("predict-onnx-corrupted-meta-json", ["predict", "--run-id", "{run}", "--input", "{tmp}/rows.csv", "--onnx"], lambda c: (c.rows("rows.csv"), _run_artifact("onnx/onnx_meta.json", b"{broken")(c))),
    # -- reproduce
    ("reproduce-unknown-run", ["reproduce", "--run-id", "0123456789abcdef0123456789abcdef"], None),
    ("reproduce-not-an-id", ["reproduce", "--run-id", "../../etc"], None),
    ("reproduce-negative-tolerance", ["reproduce", "--run-id", "{run}", "--tolerance", "-1"], None),
    # -- bench
    ("bench-zero-epochs", ["bench", "--epochs", "0", "model.text_encoder={bert}", *TINY[:2]], None),
    ("bench-json-is-a-folder", ["bench", "--json", "{tmp}", "model.text_encoder={bert}"], None),
    ("bench-unknown-key", ["bench", "model.nope=1"], None),
]


def _snapshot(client: mlflow.MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)

    def listing(path=None):
        out = []
        for a in client.list_artifacts(run_id, path):
            out += listing(a.path) if a.is_dir else [(a.path, a.file_size)]
        return out

    models = [m.model_id for m in (run.outputs.model_outputs if run.outputs else [])]
    parity = mlflow.artifacts.load_text(f"runs:/{run_id}/onnx/onnx_parity.json")  # a failed export must not replace it
    return {"status": run.info.status, "params": run.data.params, "tags": run.data.tags, "metrics": run.data.metrics, "artifacts": sorted(listing()),
            "models": models, "parity": parity}


def test_the_table_is_large_and_has_unique_ids():
    ids = [r[0] for r in ROWS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 60
    commands = {r[1][0] for r in ROWS if r[1]}
    assert commands >= {"train", "tune", "zoo", "compare", "inspect", "export", "predict", "reproduce", "config", "fusions", "bench"}


@pytest.mark.parametrize("argv,setup", [pytest.param(a, s, id=i) for i, a, s in ROWS])
def test_bad_input_is_one_error_line_and_exit_2(argv, setup, finished, tiny_bert, tmp_path, capsys):
    ctx = Ctx(finished, tiny_bert, tmp_path)
    plain = ctx.file("plain.txt", "a file, not a folder")
    client = mlflow.MlflowClient()
    before = _snapshot(client, finished)
    try:
        if setup:
            setup(ctx)
        capsys.readouterr()
        code = cli([a.format(run=finished, tmp=tmp_path, bert=tiny_bert, file=plain) for a in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    finally:
        for path, data in reversed(ctx.restore):
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in out + err
    running = client.search_runs([e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'")
    assert not running, [r.info.run_id for r in running]
    assert _snapshot(client, finished) == before


def test_a_quote_cannot_widen_a_compare_filter(finished, capsys):
    """A value built to match every run (a quote closing the string) matches none: it is rejected or matched exactly."""
    code = cli(["compare", "--runs", f"{finished}') OR attributes.run_id IN ('x", "--no-log"])
    assert code == 2 and "is not a run id" in capsys.readouterr().err
    code = cli(["compare", "--study", "x' OR tags.`mmfusion.fusion` LIKE '%", "--no-log"])
    assert code == 2 and "no runs tagged mmfusion.study=" in capsys.readouterr().err


def test_errors_name_the_run_and_the_file(finished, tiny_bert, tmp_path, capsys):
    ctx = Ctx(finished, tiny_bert, tmp_path)
    rows = ctx.rows("rows.csv")
    cases = [
        (_garbage("model.safetensors"), [], "bundle file model.safetensors has sha256"),
        (_garbage("text_encoder/config.json", None), [], "bundle file text_encoder/config.json is missing"),
        (_onnx_model(None), ["--onnx"], "logged model model.onnx: the ONNX model file is missing"),
        (_onnx_model(b"not onnx"), ["--onnx"], "logged model model.onnx: sha256"),
        (_run_artifact("onnx/onnx_meta.json", b"{broken"), ["--onnx"], "onnx/onnx_meta.json: not a valid onnx_meta.json"),
    ]
    for setup, extra, expected in cases:
        try:
            setup(ctx)
            assert cli(["predict", "--run-id", finished, "--input", str(rows), *extra]) == 2
        finally:
            for path, data in reversed(ctx.restore):
                path.unlink(missing_ok=True) if data is None else path.write_bytes(data)
            ctx.restore.clear()
        err = capsys.readouterr().err
        assert f"error: run {finished}: {expected}" in err, err
    # and with everything restored the same command works
    assert cli(["predict", "--run-id", finished, "--input", str(rows), "--output", str(tmp_path / "p.csv")]) == 0


def test_the_bundle_hashes_live_in_the_run_not_in_the_model(finished):
    from mmfusion.serving.bundle import MANIFEST_TAG

    manifest = json.loads(mlflow.MlflowClient().get_run(finished).data.tags[MANIFEST_TAG])
    assert {"model.safetensors", "config.yaml", "preprocessing.json", "text_encoder/config.json"} <= set(manifest)
    assert all(len(v) == 64 for v in manifest.values())


def test_the_cli_loads_a_bundle_without_pyfunc_or_pickle(finished, tiny_bert, tmp_path, monkeypatch, capsys):
    """predict (PyTorch) reads safetensors + JSON/YAML only: pyfunc.load_model (which runs the stored code), pickle and
    torch.load are never called."""
    import pickle

    import torch

    def forbidden(*a, **k):
        raise AssertionError("called a loader that can execute stored code")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    rows = Ctx(finished, tiny_bert, tmp_path).rows("rows.csv")
    assert cli(["predict", "--run-id", finished, "--input", str(rows), "--output", str(tmp_path / "p.csv")]) == 0, capsys.readouterr().err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 7


def test_inf_in_a_numeric_column_names_file_column_and_rows(tmp_path):
    import pandas as pd

    from mmfusion.data.table import check_numeric
    from mmfusion.errors import DataError

    frame = pd.DataFrame({"price": [1.0, float("inf"), float("-inf"), None]})
    with pytest.raises(DataError, match=r"x.csv: numeric column 'price' holds non-finite values \(inf/-inf\) in 2 row\(s\)"):
        check_numeric(frame, ["price"], "x.csv")
    check_numeric(frame.iloc[[0, 3]], ["price"], "x.csv")  # blanks are missing values, not errors
