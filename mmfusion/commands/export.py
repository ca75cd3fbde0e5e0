"""`mmfusion export --run-id ID [--quantize] [--tolerance 1e-4]`"""

from __future__ import annotations

import argparse

from mmfusion.tracking.contract import Tag

HELP = "export a trained run's model to ONNX, prove it equals PyTorch on held-out batches, and log it to the run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", required=True, help="the MLflow run whose logged model to export")
    p.add_argument("--quantize", action="store_true", help="also log an int8 dynamically quantized model with its accuracy figures")
    p.add_argument("--tolerance", type=float, default=None, help="largest |ONNX - PyTorch| allowed (default: the run's export.tolerance)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI holding the run (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def main(args: argparse.Namespace) -> int:
    import math
    import tempfile

    from mmfusion.tracking.artifacts import get_run
    from mmfusion.errors import UserError
    from mmfusion.tracking.runs import config_of_run

    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise UserError(f"--tolerance must be a finite number > 0, got {args.tolerance:g}")
    from mmfusion.tracking.contract import tracking_uri, use_store

    uri = use_store(tracking_uri(flag=args.tracking_uri))
    run = get_run(args.run_id)
    cfg = config_of_run(args.run_id, uri)
    from mmfusion.serving.bundle import load_predictor
    from mmfusion.data.datamodule import prepare_data
    from mmfusion.export import ParityError, log_onnx

    with tempfile.TemporaryDirectory() as tmp:
        predictor = load_predictor(args.run_id, tmp)
        seed = cfg.data.split_seed if getattr(cfg.data, "split_seed", None) is not None else cfg.seed
        data = prepare_data(cfg.data, seed, predictor.tokenizer)  # held-out batches for the parity check
        if data.fingerprint != run.data.tags.get(Tag.DATA_FINGERPRINT):
            print("warning: the data changed since the run was trained; parity is checked on today's held-out rows")
        try:  # everything is checked before anything is logged: a failed export leaves the run as it was
            report = log_onnx(cfg, predictor.model, data, predictor.tokenizer, quantize=args.quantize or cfg.export.quantize, tolerance=args.tolerance, into_run=args.run_id)
        except ParityError as err:
            raise UserError(f"run {args.run_id}: export failed its parity check, nothing was logged ({err})") from None
    print(f"run {args.run_id}: ONNX export logged; max |ONNX - PyTorch| = {report['max_abs_diff']:.3g} over {report['samples_checked']} samples "
          f"(tolerance {report['tolerance']:g}, export {report['export_seconds']:.1f}s)")
    return 0
