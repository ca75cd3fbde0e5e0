"""`mmfusion predict (--run-id ID | --model models:/NAME@ALIAS) --input rows.csv [--onnx [--int8]] [--output out.csv]`"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "score rows of a CSV/TSV/Parquet table with a run's model (PyTorch bundle, or ONNX Runtime alone with --onnx)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the MLflow run whose model scores the rows")
    which.add_argument("--model", metavar="URI", help="a registered model instead: models:/NAME@ALIAS (e.g. @best) or models:/NAME/VERSION")
    p.add_argument("--input", required=True, help="table with the training columns (text, numeric, categorical; id optional)")
    p.add_argument("--onnx", action="store_true", help="score with onnxruntime + the run's tokenizer files and preprocessing.json only (no torch)")
    p.add_argument("--int8", action="store_true", help="with --onnx: the int8 quantized model (export.quantize=true or `export --quantize`)")
    p.add_argument("--output", help="where to write the predictions (default: <input stem>_predictions.csv)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per model call, sorted by length within a piece (default 64)")
    p.add_argument("--piece-rows", type=int, default=4096, help="rows read, scored and held at once; the output grows piece by piece (default 4096)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI holding the run (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def main(args: argparse.Namespace) -> int:
    import tempfile

    from mmfusion.tracking.artifacts import get_run, reading
    from mmfusion.errors import UserError
    from mmfusion.paths import check_output_file
    from mmfusion.serving.streaming import predict_file, read_pieces
    from mmfusion.tracking.contract import tracking_uri, use_store

    use_store(tracking_uri(flag=args.tracking_uri))
    if args.model:  # the version's run: scoring it checks the same hashes as scoring the run
        from mmfusion.tracking.registry import resolve_run

        args.run_id = resolve_run(args.model)
    if args.int8 and not args.onnx:
        raise UserError("--int8 needs --onnx (the int8 model is an ONNX model)")
    if args.batch_size < 1 or args.piece_rows < 1:
        raise UserError("--batch-size and --piece-rows must be >= 1")
    out = check_output_file(args.output or f"{Path(args.input).stem}_predictions.csv", "--output")
    pieces = read_pieces(args.input, args.piece_rows)  # a missing, unreadable or empty input fails before any download
    get_run(args.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        if args.onnx:  # onnxruntime, numpy, pandas and `tokenizers` only: no torch, no PyTorch weights
            from mmfusion.serving.onnx_scorer import OnnxPredictor, download_onnx

            model_path, artifacts = download_onnx(args.run_id, tmp, int8=args.int8)
            with reading(f"run {args.run_id}", "its ONNX artifacts (onnx/)"):
                predictor = OnnxPredictor(model_path, artifacts, int8=args.int8, source=f"run {args.run_id}")
        else:
            from mmfusion.serving.bundle import load_predictor

            predictor = load_predictor(args.run_id, tmp)  # safetensors + JSON/YAML, checked against the run's hashes
        engine = "ONNX Runtime" + (" int8" if args.int8 else "") if args.onnx else "PyTorch"
        out.parent.mkdir(parents=True, exist_ok=True)
        # the input is read, scored and written piece by piece: memory stays flat whatever the file's size
        written = predict_file(predictor, args.input, out, batch_size=args.batch_size, piece_rows=args.piece_rows, engine=engine, pieces=pieces)
    print(f"wrote {written} predictions ({engine}) to {out}")
    return 0
