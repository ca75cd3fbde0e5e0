"""`fit(cfg, data, callbacks, logger=...) -> FitResult`: train and evaluate one model in this process (the whole job,
or one rank of it). No MLflow and no environment variables: the caller passes the logger, the callbacks (heartbeat,
pruning), the checkpoint folder and the checkpoint to resume from, and decides what to record (`mmfusion.jobs.train`).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from transformers import AutoModel

from mmfusion import progress
from mmfusion.config import Config
from mmfusion.data.datamodule import MultimodalDataModule, PreparedData
from mmfusion.data.layer_cache import attach_layer_hidden
from mmfusion.data.memo import attach_embeddings, text_backbone as memo_backbone
from mmfusion.encoders import load_text_backbone
from mmfusion.modeling.classifier import MultimodalClassifier, build_model
from mmfusion.modeling.module import FusionClassifierModule
from mmfusion.training.callbacks import LastCheckpoint, MemoryReport, SamplerEpoch, best_checkpoint
from mmfusion.training.hardware import apply_threads, resolve_precision, world_size

log = logging.getLogger(__name__)
for _noise in (r".*module\(s\) in eval mode.*", r".*predict returned None.*", r".*smaller than the logging interval.*", r".*does not have many workers.*", r".*LeafSpec.*", r".*sync_dist=True.*"):
    warnings.filterwarnings("ignore", message=_noise)  # expected here: frozen encoders, small data, outputs kept by the module
SPLIT_RESULTS = (("train", "predict"), ("val", "val"), ("test", "test"))  # split -> key of FusionClassifierModule.results


@dataclass
class FitResult:
    """What one `fit` produced, the same in every mode. `metrics` (validation and test, as Lightning reduced them) is
    on every rank; `outputs`, `model` and `cost_metrics` on rank 0 only (empty / None elsewhere)."""

    metrics: dict[str, float]
    outputs: dict[str, dict[str, torch.Tensor]]  # split -> the evaluation outputs of every sample (see tracking.predictions)
    module: FusionClassifierModule = field(repr=False)  # on rank 0 its `model` is the full model
    model: MultimodalClassifier | None = field(repr=False)  # the unsharded network on CPU, eval mode
    train_seconds: float
    cost_metrics: dict[str, float]  # parameter counts, training samples/s, per-rank memory (what `compare` shows)
    is_global_zero: bool


def _strategy(cfg: Config):
    """fsdp: FSDP2 through ModelParallelStrategy (gloo on CPUs, NCCL on GPUs; sharding in configure_model)."""
    if cfg.trainer.strategy == "fsdp":
        return ModelParallelStrategy(data_parallel_size=world_size(cfg), tensor_parallel_size=1)
    return cfg.trainer.strategy


def _trainer(cfg: Config, logger: Logger | bool, root_dir: Path | None, callbacks: list[L.Callback]) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),
        gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar and not progress.is_quiet(),  # `--quiet`: no bars at all
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),  # ours only: no default one
        num_sanity_val_steps=0,
        strategy=_strategy(cfg),
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(root_dir) if root_dir is not None else None,
    )


def fit(
    cfg: Config,
    data: PreparedData,
    callbacks: Sequence[L.Callback] = (),
    *,
    logger: Logger | bool = False,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    pad_id: int = 0,
    predict_train: bool = True,
    memo: bool = False,
) -> FitResult:
    """Build the model (and the embedding cache of a frozen encoder, or the layer cache of a partly trained one), fit, validate, test and predict the train split.

    `data` is prepared and checked by the caller (which also seeds the run); `callbacks` join the trainer;
    `checkpoint_dir` receives `last.ckpt` when `cfg.trainer.checkpoints` (multi-process: rank 0's folder is used by all
    ranks, Lightning broadcasts it); `resume_from` is a complete checkpoint to continue; `pad_id` is the tokenizer's;
    `predict_train=False` skips the train split's prediction pass (it feeds only the plots: lean study trials);
    `memo`: the pretrained backbone read from disk once per process and copied (`mmfusion.data.memo`: lean trials).
    """
    if cfg.trainer.checkpoints and checkpoint_dir is None:
        raise ValueError("fit: trainer.checkpoints is on but no checkpoint_dir was given")
    apply_threads(cfg.trainer.threads)
    backbone = memo_backbone(cfg.model.text_encoder) if memo else load_text_backbone(cfg.model.text_encoder)
    n_classes = len(data.preprocessor.classes)
    model = build_model(cfg.model, backbone, data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, n_classes, len(data.preprocessor.texts))
    module = FusionClassifierModule(model, cfg.optim, n_classes, cfg.model.modality_dropout, data.preprocessor.class_counts)
    if cfg.trainer.compile and cfg.model.train_text_layers == "all":
        backbone.compile(dynamic=True)  # in place: state-dict keys stay; dynamic: batch shapes vary (see results/bench.md)
    if cfg.model.train_text_layers == 0:
        stats = attach_embeddings(data, model.text_encoder, cfg.model.text_encoder, cfg.data.max_chunks, cfg.data.chunk_len, cfg.data.cache_dir)
        log.info("text embedding cache: %s", stats)
    elif model.text_lower is not None:  # a resumed job rereads (or rebuilds) the cache too: the checkpoint holds the weights
        stats = attach_layer_hidden(data, backbone, cfg.model.text_encoder, model.text_lower, cfg.data.max_chunks, cfg.data.chunk_len, cfg.data.cache_dir)
        log.info("text layer cache (states entering layer %d): %s", model.text_lower, stats)
    datamodule = MultimodalDataModule(data, cfg.trainer.batch_size, cfg.trainer.eval_batch_size, cfg.data.num_workers, cfg.seed, pad_id, cfg.data.bucket_by_length)
    memory = MemoryReport()
    checkpoints = [LastCheckpoint(checkpoint_dir, cfg.trainer.checkpoint_every_n_steps)] if cfg.trainer.checkpoints else []
    best = best_checkpoint(cfg.trainer, data.has_modality, checkpoint_dir)  # trainer.restore_best: [] or [callback]
    checkpoints += best
    root_dir = checkpoint_dir.parent if checkpoint_dir is not None else None
    trainer = _trainer(cfg, logger, root_dir, [*callbacks, memory, SamplerEpoch(), *checkpoints])

    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - started
    for keeper in best:
        keeper.restore(trainer, module, datamodule)  # the best validation epoch's weights replace the last epoch's
    if "val" not in module.results:  # resumed from the final checkpoint: fit had no epoch left to validate
        trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if predict_train:
        trainer.predict(module, dataloaders=datamodule.eval_loader("train"), return_predictions=False)
    full_model = _full_model(cfg, module, backbone.config, data)  # collective under FSDP: every rank calls it
    if not trainer.is_global_zero:
        return FitResult(metrics, {}, module, None, train_seconds, {}, False)
    module.model = full_model
    outputs = {split: module.results[key] for split, key in SPLIT_RESULTS if key in module.results}
    cost = {**memory.report, **_cost_metrics(full_model, trainer, len(data.splits["train"].ids), train_seconds)}
    if best and best[0].best_epoch is not None:
        cost["restored_epoch"] = best[0].best_epoch  # 0-based: the epoch whose weights were tested and logged
    return FitResult(metrics, outputs, module, full_model, train_seconds, cost, True)


def _cost_metrics(model: MultimodalClassifier, trainer: L.Trainer, n_train: int, seconds: float) -> dict[str, float]:
    """What `compare` puts beside the metrics: parameter counts and training samples per second of `fit`."""
    epochs = trainer.global_step / max(1, trainer.num_training_batches)  # optimizer steps, in epochs (any world size)
    return {
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "n_fusion_params": sum(p.numel() for p in model.fusion.parameters()),
        "train_samples_per_second": epochs * n_train / max(seconds, 1e-9),
    }


def _full_model(cfg: Config, module: FusionClassifierModule, backbone_config, data: PreparedData) -> MultimodalClassifier:
    """An unsharded CPU copy of the trained network (FSDP: gathered from all ranks) for export and serving."""
    if not any(isinstance(m, FSDPModule) for m in module.model.modules()):
        return module.model.cpu().eval()
    state = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    copy = build_model(cfg.model, AutoModel.from_config(backbone_config), data.preprocessor.n_numeric_features, data.preprocessor.cardinalities, len(data.preprocessor.classes), len(data.preprocessor.texts))
    if state:  # rank 0 receives the full state; the others get an empty dict
        copy.load_state_dict(state)
    return copy.eval()
