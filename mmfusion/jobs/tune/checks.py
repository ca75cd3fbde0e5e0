"""What can be checked before a study's first trial, so that bad input ends it at once instead of failing every trial.

Already checked when the config loads: `study.metric` is a validation metric (a `test_` one is refused), each
search-space key exists and each of its choices / bounds is valid on its own (e.g. every sampled fusion name is
registered). Checked here, on the base config's data (prepared once, as `train` prepares it): the data loads, the class
weights fit its classes, and the metric can be computed on its validation split. A data key in the search space is
checked at its base value only; a combination that breaks a cross-field rule still fails only its own trial. With lean
trials the base data goes into the in-process memo, so a trial that changes no data key prepares none.
"""

from __future__ import annotations

import numpy as np

from mmfusion.config import Config
from mmfusion.data.datamodule import PreparedData, prepare_data
from mmfusion.data.memo import prepared_data
from mmfusion.encoders import load_tokenizer
from mmfusion.errors import ConfigError
from mmfusion.modeling.module import check_class_weights
from mmfusion.modeling.metrics import TAB, TEXT

ALWAYS = ("loss", "accuracy", "f1_macro", "faithfulness")  # FusionClassifierModule logs these for any data


def producible_metrics(data: PreparedData) -> set[str]:
    """The `val_*` metrics FusionClassifierModule logs for this data (see its `_finish` and mmfusion.modeling.metrics)."""
    val = data.splits["val"]
    names = set(ALWAYS)
    if len(np.unique(val.labels)) >= 2:  # AUROC needs both classes among the validation labels
        names.add("auroc")
    if {TEXT, TAB} <= set(np.unique(val.modality).tolist()):  # needs samples known to be text- and tab-informative
        names.add("attribution_auroc")
    return {f"val_{n}" for n in names}


def why_not(metric: str, data: PreparedData) -> str:
    if metric == "val_attribution_auroc":
        if not data.has_modality:
            return "the data has no true-modality column (only the synthetic data has one)"
        return "the validation split lacks text-informative or tab-informative samples"
    if metric == "val_auroc":
        return "the validation split has a single class"
    return "the metric is not logged for this data"


def check_study(cfg: Config) -> PreparedData:
    """Raise a UserError (one line) for what would fail every trial; -> the prepared base data."""
    sc = cfg.study
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    data = prepared_data(cfg.data, cfg.seed, tokenizer, cfg.model.text_encoder) if sc.lean_trials else prepare_data(cfg.data, cfg.seed, tokenizer)
    check_class_weights(cfg.optim, len(data.preprocessor.classes))
    possible = producible_metrics(data)
    if sc.metric not in possible:
        raise ConfigError(f"study.metric {sc.metric!r} cannot be computed: {why_not(sc.metric, data)}; "
                          f"for this data choose one of {sorted(possible)}")
    return data
