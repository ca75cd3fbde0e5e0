"""`bench study`'s two sides differ only in the cache and lean trials; the trial line says what a trial was."""

from __future__ import annotations

import datetime

import optuna

from mmfusion.bench.study import StudyBenchSettings, format_study_report, side_config
from mmfusion.config import load_config
from mmfusion.jobs.tune.study import TrialLine, short_params


def test_the_sides_run_the_same_study_with_and_without_cache_and_lean_trials(tmp_path):
    cfg = load_config("experiments/study_quickstart.yaml", [])
    s = StudyBenchSettings(trials=5, samples=100, epochs=1)
    uncached, lean = (side_config(cfg, s, tmp_path, name, flag) for name, flag in (("uncached", False), ("cached_lean", True)))
    assert uncached.data.cache_dir is None and not uncached.study.lean_trials
    assert lean.data.cache_dir == str(tmp_path / "cached_lean" / "cache") and lean.study.lean_trials
    for side in (uncached, lean):
        assert side.study.n_trials == 5 and side.data.synthetic.n_samples == 100 and side.trainer.max_epochs == 1
        assert side.study.sampler.name == "random" and side.study.sampler.seed == 0 and side.study.pruner.name == "none"
        assert side.study.search_space == cfg.study.search_space and side.model.train_text_layers == 0
    assert uncached.study.storage != lean.study.storage and uncached.tracking.uri != lean.tracking.uri  # own stores


def test_the_report_prints_the_ratio():
    side = {"seconds": 100.0, "cpu_seconds": 180.0, "first_trial_s": 10.0, "median_trial_s": 5.0, "best": {"number": 1, "value": 0.9}, "values": [0.5, 0.9]}
    r = {"settings": {"trials": 2, "samples": 100, "epochs": 1}, "encoder": "enc", "machine": "CPU: x", "uncached": side,
         "cached_lean": {**side, "seconds": 10.0, "cpu_seconds": 12.0}, "ratio": 10.0, "cpu_ratio": 15.0, "same_values": True}
    text = format_study_report(r)
    assert "vs uncached: 10.0x faster" in text and "in CPU time 15.0x" in text and "identical" in text


def test_a_trial_line_shows_number_value_params_and_time(capsys):
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("optim.lr", 1e-3, 1e-2) + len(t.suggest_categorical("model.fusion", ["gate"])), n_trials=1)
    trial = study.trials[0]
    trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=12)
    TrialLine(5, "val_f1_macro")(study, trial)
    line = capsys.readouterr().err
    assert line.startswith("trial 0 complete val_f1_macro=") and " in 12 s " in line and "fusion=gate" in line and "1/5 done" in line
    assert short_params({"optim.lr": 0.00123456, "model.fusion": "moe"}) == "lr=0.00123 fusion=moe"


def test_after_a_trial_survivors_are_frozen_garbage_still_goes_and_the_study_unfreezes(monkeypatch):
    import gc
    import weakref

    from mmfusion.jobs.tune import study as study_mod
    from mmfusion.jobs.tune.objective import AfterTrial

    class Node:
        pass

    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    try:
        AfterTrial()(study, study.trials[0])
        assert gc.get_freeze_count() > 0  # what survived is out of later collections
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made by the next trial, garbage at its end
        gone = weakref.ref(a)
        del a, b
        AfterTrial()(study, study.trials[0])
        assert gone() is None
    finally:
        gc.unfreeze()
    monkeypatch.setattr(study_mod, "_await_stale", lambda *a: None)
    monkeypatch.setattr(study_mod, "_optimize", lambda *a: gc.freeze())  # a study whose trials froze survivors
    cfg = load_config("experiments/study_quickstart.yaml", [])
    study_mod.optimize(study, None, cfg.study.model_copy(update={"timeout": None}), [])
    assert gc.get_freeze_count() == 0
