"""`mmfusion export --run-id ID [--quantize] [--tolerance 1e-4]`"""

from __future__ import annotations

import argparse

HELP = "export a trained run's model to ONNX, prove it equals PyTorch on held-out batches, and log it to the run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", required=True, help="the MLflow run whose logged model to export")
    p.add_argument("--quantize", action="store_true", help="also log an int8 dynamically quantized model with its accuracy figures")
    p.add_argument("--tolerance", type=float, default=None, help="largest |ONNX - PyTorch| allowed (default: the run's export.tolerance)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI holding the run (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def main(args: argparse.Namespace) -> int:
    import os
    import tempfile

    import mlflow

    from mmfusion.commands.predict import download_bundle
    from mmfusion.runs import config_of_run

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    cfg = config_of_run(args.run_id)
    from mmfusion.bundle import Predictor
    from mmfusion.data.datamodule import prepare_data
    from mmfusion.export import log_onnx

    run = mlflow.MlflowClient().get_run(args.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor(download_bundle(args.run_id, tmp))
        seed = cfg.data.split_seed if getattr(cfg.data, "split_seed", None) is not None else cfg.seed
        data = prepare_data(cfg.data, seed, predictor.tokenizer)  # held-out batches for the parity check
        if data.fingerprint != run.data.tags.get("mmfusion.data_fingerprint"):
            print("warning: the data changed since the run was trained; parity is checked on today's held-out rows")
        status = run.info.status
        mlflow.start_run(run_id=args.run_id)  # resume, and give the run back with the status it had
        try:
            report = log_onnx(cfg, predictor.model, data, predictor.tokenizer, quantize=args.quantize or cfg.export.quantize, tolerance=args.tolerance)
        except BaseException as err:
            mlflow.set_tag("mmfusion.export_error", f"{type(err).__name__}: {err}"[:5000])
            raise
        finally:
            mlflow.end_run(status)
    print(f"run {args.run_id}: ONNX export logged; max |ONNX - PyTorch| = {report['max_abs_diff']:.3g} over {report['samples_checked']} samples "
          f"(tolerance {report['tolerance']:g}, export {report['export_seconds']:.1f}s)")
    return 0
