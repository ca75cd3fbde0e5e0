"""`mmfusion bench [--config X.yaml] [key=value ...] [--json PATH|-]`; `mmfusion bench --predict [--rows N]`: the predict benchmark;
`mmfusion bench study [--trials 20]`: a study, uncached vs cached lean"""

from __future__ import annotations

import argparse
import json
import sys

from mmfusion.cli import add_config_arguments

HELP = "measure speed and memory: the original design vs the optimized path, eager PyTorch vs ONNX Runtime (fp32, int8)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--train-samples", type=int, default=96, help="training dialogues each path trains on (default 96)")
    p.add_argument("--eval-samples", type=int, default=64, help="validation dialogues each path scores; also the batch-64 set (default 64)")
    p.add_argument("--latency-samples", type=int, default=16, help="batch-1 calls per inference engine (default 16)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs per path: the same budget for both (default 1)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime section")
    p.add_argument("--compile", action="store_true", help="also measure the optimized path under torch.compile")
    p.add_argument("--profile", action="store_true", help="print where one optimized training step spends its time")
    p.add_argument("--text-layers", type=int, metavar="K", help="also measure the optimized path training only the top K encoder layers "
                   "(model.train_text_layers=K, from the same initial weights)")
    p.add_argument("--trials", type=int, default=20, help="`bench study`: trials of each side's study (default 20)")
    p.add_argument("--study-samples", type=int, default=400, help="`bench study`: synthetic dialogues of its studies (default 400)")
    p.add_argument("--predict", action="store_true", help="instead: stream --rows rows through predict, PyTorch beside ONNX Runtime (rows/s, peak RSS); "
                   "the model is built from the config (pretrained encoder, random-init rest), no run needed")
    p.add_argument("--rows", type=int, default=100_000, help="with --predict: rows scored by each path (default 100000)")
    p.add_argument("--piece-rows", type=int, default=4096, help="with --predict: rows read and scored at once (default 4096)")
    p.add_argument("--int8", action="store_true", help="with --predict: also the int8 ONNX encoder")
    p.add_argument("--engines", help="with --predict: only these, comma-separated, of pytorch, onnx_fp32, onnx_int8 (e.g. a long run of one engine)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout, after the table)")


def main(args: argparse.Namespace) -> int:
    from mmfusion.config import load_config

    study = args.overrides[:1] == ["study"]  # `bench study ...`: the study benchmark (bench/study.py)
    cfg = load_config(args.config, args.overrides[study:])
    if args.json and args.json != "-":
        from mmfusion.paths import check_output_file

        check_output_file(args.json, "--json")
    if study:
        return _study(cfg, args)
    if args.predict:
        from mmfusion.bench.predict import PredictSettings, format_predict_report, run_predict_bench

        engines = None if args.engines is None else tuple(e.strip() for e in args.engines.split(",") if e.strip())  # (): none given
        settings = PredictSettings(args.rows, piece_rows=args.piece_rows, int8=args.int8, engines=engines)
        result = run_predict_bench(cfg, settings, progress=lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
        return _emit(result, format_predict_report(result), args.json)
    from mmfusion.bench.runner import BenchSettings, format_report, run_bench

    settings = BenchSettings(args.train_samples, args.eval_samples, args.latency_samples, args.epochs, not args.no_onnx, args.compile, args.profile, args.text_layers)
    result = run_bench(cfg, settings, progress=lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
    result["command"] = " ".join(["python -m mmfusion", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "python -m mmfusion bench"
    return _emit(result, format_report(result), args.json)


def _emit(result: dict, table: str, json_path: str | None) -> int:
    print(table)
    if json_path == "-":
        print(json.dumps(result, indent=2))
    elif json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _study(cfg, args: argparse.Namespace) -> int:
    from mmfusion.bench.study import StudyBenchSettings, format_study_report, run_study_bench

    result = run_study_bench(cfg, StudyBenchSettings(args.trials, args.study_samples, args.epochs), progress=lambda s: print(f"[bench study] {s}", file=sys.stderr, flush=True))
    return _emit(result, format_study_report(result), args.json)
