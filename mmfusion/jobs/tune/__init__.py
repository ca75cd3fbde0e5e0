"""Optuna studies whose trials are `train` runs, nested under one MLflow parent run per study.

- Search space (`space`): `study.search_space` (validated with the config); a parameter with `when` is sampled only
  when an earlier categorical parameter took one of the listed values (per-fusion parameters).
- Before the first trial (`checks`): the data loads and `study.metric` can be computed on it; otherwise one error.
- Pruning: optuna-integration's Lightning callback reports `study.metric` every epoch. In one process it raises
  inside `fit`; in a multi-process trial every worker adds it (`trial_callbacks`, from the trial's spec in its job file), rank 0 reports, and the decision
  comes back through the RDB storage: `check_pruned()` after `train` returns. This process alone owns the study.
- Crashes (`storage`): trials run inside `Study.optimize` with RDB heartbeats; a trial whose worker died is failed (its
  MLflow run too) and re-queued with the same parameters; the study stops at exactly `n_trials` complete + pruned.
- Failures and stops (`objective`, `study`): `study.max_failed_trials` failures in a row end the study with an error;
  SIGINT/SIGTERM end it at once (trial and parent runs KILLED, the trial FAIL). A re-run of the command resumes it.
- The parent run id is a study user attribute, so a re-run of the same command, or a second worker on the same
  storage, logs into the same parent run. The storage URL's password is never printed or logged (`safe_url`).
"""

from mmfusion.jobs.tune.objective import Objective, StudyFull, TrialsFailing
from mmfusion.jobs.tune.report import log_best, log_plots, log_study_setup, study_params
from mmfusion.jobs.tune.space import sample_params, trial_config
from mmfusion.jobs.tune.storage import DEFAULT_STORAGE, PARENT_ATTR, engine_url, make_storage, open_study, safe_url, trial_callbacks, trial_spec
from mmfusion.jobs.tune.study import StudyResult, optimize, run_study

__all__ = ["DEFAULT_STORAGE", "PARENT_ATTR", "Objective", "StudyFull", "StudyResult", "TrialsFailing", "engine_url", "log_best", "log_plots",
           "log_study_setup", "make_storage", "open_study", "optimize", "run_study", "safe_url", "sample_params", "study_params", "trial_callbacks", "trial_config", "trial_spec"]
