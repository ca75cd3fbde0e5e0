"""The zoo: every variant x every seed through `train`, nested under one MLflow parent run, then compared.

Fairness: the members share everything in the config except their variant's model keys and the seed. The seed moves
the initialisation, dropout and batch order; the data and split stay those of `data.split_seed` (null: the file's
`seed`) for every member, unless `zoo.vary_data` is true, in which case each seed also draws its own data and split,
still shared by all variants at that seed. Paired tests pair runs by seed.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from mmfusion.analysis import compare as comparison
from mmfusion.config import Config, ZooConfig, build_config, resolved_dict, to_yaml
from mmfusion.errors import ConfigError
from mmfusion.jobs.train import train
from mmfusion.tracking.session import git_sha, library_versions, mlflow_run
from mmfusion.tracking.contract import Tag
from mmfusion.tracking.lineage import data_name

log = logging.getLogger(__name__)


@dataclass
class Member:
    label: str
    seed: int
    cfg: Config


@dataclass
class ZooResult:
    parent_run_id: str
    run_ids: list[str]
    out_dir: Path | None = None
    comparison: comparison.Comparison | None = None


def members(cfg: Config, seeds: list[int] | None = None, only: list[str] | None = None) -> list[Member]:
    """Every (variant, seed) config, validated up front so a bad member fails before the first run starts."""
    zoo = cfg.zoo or ZooConfig()
    seeds = list(seeds) if seeds is not None else zoo.seeds
    variants = zoo.members()
    if only:
        unknown = sorted(set(only) - {label for label, _ in variants})
        if unknown:
            raise ConfigError(f"--variants: unknown label(s) {', '.join(unknown)}; the zoo has: {', '.join(label for label, _ in variants)}")
        variants = [v for v in variants if v[0] in only]
    base = resolved_dict(cfg.model_copy(update={"zoo": None}))
    pinned = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
    out = []
    for label, model in variants:
        for seed in seeds:
            raw = {**base, "seed": seed, "model": {**base["model"], **model}}
            raw["data"] = {**base["data"], "split_seed": seed if zoo.vary_data else pinned}
            raw["tracking"] = {**base["tracking"], "run_name": base["tracking"].get("run_name") or f"{label}-{data_name(cfg)}-s{seed}"}
            out.append(Member(label, seed, build_config(raw, f"zoo member {label!r} (seed {seed})")))
    return out


def run_zoo(cfg: Config, *, seeds: list[int] | None = None, only: list[str] | None = None, out_dir: str | Path | None = None, resume: str | None = None, compare: bool = True) -> ZooResult:
    """Train every member under one parent run (`resume`: a parent whose finished members are kept), then compare."""
    todo = members(cfg, seeds, only)
    zoo = cfg.zoo or ZooConfig()
    parent_cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"run_name": cfg.tracking.run_name or "zoo"})})
    tags = {Tag.KIND: "zoo", Tag.GIT_SHA: git_sha(), Tag.ZOO_MEMBERS: str(len(todo))}
    with mlflow_run(parent_cfg, tags, run_id=resume) as parent:
        parent_id = parent.info.run_id
        done = _finished_members(parent_id) if resume else {}
        if resume is None:
            mlflow.log_text(to_yaml(cfg), "zoo.yaml")
            mlflow.log_dict(library_versions(), "environment.json")
        run_ids = []
        for i, m in enumerate(todo, 1):
            if (m.label, m.seed) in done:
                run_ids.append(done[(m.label, m.seed)])
                print(f"[{i}/{len(todo)}] {m.label} seed={m.seed}: kept {done[(m.label, m.seed)]}")
                continue
            started = time.perf_counter()
            result = train(m.cfg, parent_run_id=parent_id, extra_tags={Tag.ZOO_LABEL: m.label, Tag.ZOO_SEED: str(m.seed), Tag.ZOO_PARENT: parent_id})
            run_ids.append(result.run_id)
            shown = ", ".join(f"{k}={result.metrics[k]:.4f}" for k in zoo.metrics if k in result.metrics)
            print(f"[{i}/{len(todo)}] {m.label} seed={m.seed}: {shown} ({time.perf_counter() - started:.1f} s, run {result.run_id})", flush=True)
            del result
            gc.collect()
        out = ZooResult(parent_id, run_ids)
        if compare:
            notes: list[str] = []
            runs = comparison.runs_table(comparison.find_runs(parent=parent_id), notes=notes)
            out.out_dir = Path(out_dir or Path(cfg.trainer.output_dir) / f"zoo-{parent_id[:8]}")
            out.comparison, _ = comparison.run_comparison(runs, out.out_dir, zoo.metrics, zoo.baseline, notes)
            comparison.log_comparison(out.out_dir, out.comparison, into_run=parent_id)
    return out


def _finished_members(parent_id: str) -> dict[tuple[str, int], str]:
    df = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'FINISHED'")
    if df.empty or "tags.mmfusion.zoo.label" not in df:
        return {}
    return {(r["tags.mmfusion.zoo.label"], int(r["tags.mmfusion.zoo.seed"])): r["run_id"] for _, r in df.iterrows() if isinstance(r["tags.mmfusion.zoo.label"], str)}
