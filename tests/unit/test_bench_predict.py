"""`mmfusion bench --predict`: both paths stream the same rows through predict and report rows/s and memory."""

from __future__ import annotations

import json


def test_predict_bench_runs_both_paths(tiny_overrides, tmp_path, monkeypatch, capsys):
    from mmfusion.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "predict.json"
    assert main(["bench", "--predict", "--rows", "50", "--piece-rows", "16", *tiny_overrides, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "rows/s" in table and "pytorch" in table and "onnx_fp32" in table
    res = json.loads(out.read_text())
    assert set(res["paths"]) == {"pytorch", "onnx_fp32"}
    assert all(p["rows"] == 50 and p["rows_per_s"] > 0 for p in res["paths"].values())
    assert res["onnx_max_abs_diff"] <= 1e-4 and res["onnx_vs_pytorch_rows_per_s"] > 0


def test_predict_bench_rejects_no_rows(tiny_overrides, capsys):
    from mmfusion.cli import main

    assert main(["bench", "--predict", "--rows", "0", *tiny_overrides]) == 2
    assert "--rows" in capsys.readouterr().err


def test_predict_bench_runs_only_the_engines_asked_for(tiny_overrides, tmp_path, monkeypatch, capsys):
    from mmfusion.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "predict.json"
    assert main(["bench", "--predict", "--rows", "20", "--engines", "onnx_int8", *tiny_overrides, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["paths"]) == {"onnx_int8"} and res["paths"]["onnx_int8"]["rows"] == 20 and "onnx_vs_pytorch_rows_per_s" not in res
    assert "onnx_int8" in capsys.readouterr().out
    for bad, named in (("onnx_fp16", "onnx_fp16"), ("", "none given")):
        assert main(["bench", "--predict", "--rows", "20", "--engines", bad, *tiny_overrides]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and named in err and "allowed: pytorch, onnx_fp32, onnx_int8" in err
