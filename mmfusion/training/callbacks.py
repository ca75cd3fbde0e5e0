"""Lightning callbacks of our own: per-rank memory accounting, epoch checkpoints written atomically, the weights of the
best validation epoch, the batch sampler's epoch (for exact resumes). The run's heartbeat is MLflow's business: `mmfusion.jobs.train.Heartbeat`."""

from __future__ import annotations

import logging
import os
import random
import tempfile
import resource
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mmfusion.errors import ConfigError

log = logging.getLogger(__name__)

LAST = "last.ckpt"
BEST = "best"  # best.ckpt: the weights of the best validation epoch (BestCheckpoint)
SHARDED_META = "meta.pt"  # what makes a folder a complete sharded checkpoint (Lightning writes it on rank 0)


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank
        total += local.numel() * local.element_size()
    return total


class MemoryReport(L.Callback):
    """At the end of training, logs per rank: parameters + gradients + optimizer state held locally, and peak RSS.

    With FSDP each rank holds its shard only; the per-rank figure over the 1-process figure is the sharding saving.
    """

    def __init__(self) -> None:
        self.report: dict[str, float] = {}
        self._peak = torch.zeros(3, dtype=torch.float64)  # params, grads, optimizer state (bytes) at their peak

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if trainer.global_step > 1:  # the peak is reached once the optimizer state exists; later steps repeat it
            return
        params = list(pl_module.parameters())
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]
        now = torch.tensor([_local_bytes(params), _local_bytes(p.grad for p in params), _local_bytes(state)], dtype=torch.float64)
        self._peak = torch.maximum(self._peak, now)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
        local = torch.cat([self._peak, torch.tensor([rss], dtype=torch.float64)])
        gathered = pl_module.all_gather(local).reshape(-1, 4) if trainer.world_size > 1 else local.reshape(1, 4)
        mb = 1024.0**2
        for rank, (p, g, s, peak_rss) in enumerate(gathered.tolist()):
            self.report.update({f"rank{rank}_param_mb": p / mb, f"rank{rank}_grad_mb": g / mb, f"rank{rank}_optim_state_mb": s / mb,
                                f"rank{rank}_train_state_mb": (p + g + s) / mb, f"rank{rank}_peak_rss_mb": peak_rss / mb})


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` after every epoch (and every `every_n_train_steps` optimizer steps), replaced atomically.

    Lightning 2.6's `ModelCheckpoint(save_top_k=0, save_last=True)` writes `last.ckpt` only when training ends (its
    save-last step follows a top-k save), so the epoch-end save here takes the top-k slot: after validation, where
    Lightning's own resume logic expects an epoch checkpoint. Each save goes to `last.ckpt.tmp` in the same folder and
    then takes the place of `last.ckpt` by renames, so a kill during a write leaves the previous checkpoint whole.
    """

    def __init__(self, dirpath: Path, every_n_train_steps: int | None = None) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=False, every_n_epochs=1, enable_version_counter=False)
        self.every_n_steps = every_n_train_steps or 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rng": rng_state()}  # this rank's: the checkpoint file keeps rank 0's

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Every rank continues its own random streams, set again at the first epoch's start (see there)."""
        state = next((v.get("rng") for k, v in checkpoint.get("callbacks", {}).items() if k.startswith("LastCheckpoint")), None)
        own = Path(trainer.ckpt_path or "") / f"rng_rank{trainer.global_rank}.pt"
        if trainer.world_size > 1 and own.is_file():
            state = torch.load(own, map_location="cpu", weights_only=True)
        self._resume_rng = (checkpoint.get("global_step"), state)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step, state = getattr(self, "_resume_rng", None) or (None, None)
        self._resume_rng = None
        if state and step == trainer.global_step:  # the first epoch after an epoch-end checkpoint
            # The uninterrupted job saved the streams at an epoch's end and, at the next epoch's start, its train
            # loader drew a base seed from the global generator. The resumed job's first iterator was made earlier
            # (in FitLoop.setup_data; under FSDP even before Lightning restored the checkpoint), so set the streams
            # here and draw that seed again: the dropout masks then equal the uninterrupted job's (measured).
            set_rng_state(state)
            if getattr(trainer.train_dataloader, "generator", None) is None:
                torch.empty((), dtype=torch.int64).random_()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not self.every_n_steps or trainer.global_step % self.every_n_steps:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # the epoch-end save follows validation
            return
        if not self._should_skip_saving_checkpoint(trainer):
            self.write_last(trainer)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        self.write_last(trainer)  # called by ModelCheckpoint at each epoch's end

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step:  # e.g. max_steps stopped inside an epoch
            self.write_last(trainer)

    def write_last(self, trainer: L.Trainer) -> None:
        """Collective under FSDP (every rank writes its shard); rank 0 then swaps the new checkpoint in."""
        final = Path(self.dirpath) / LAST
        tmp = final.with_name(LAST + ".tmp")
        if trainer.is_global_zero:
            _remove(tmp)  # what a killed write left behind
        trainer.strategy.barrier("LastCheckpoint.clear")
        self.last_model_path = str(final)
        self._save_checkpoint(trainer, str(tmp))
        if tmp.is_dir():  # sharded: Lightning keeps rank 0's callback state only, so each rank adds its RNG streams
            torch.save(rng_state(), tmp / f"rng_rank{trainer.global_rank}.pt")
            trainer.strategy.barrier("LastCheckpoint.rng")
        if trainer.is_global_zero:
            replace_checkpoint(tmp, final)
        trainer.strategy.barrier("LastCheckpoint.swap")
        self._last_checkpoint_saved = str(final)


class BestCheckpoint(ModelCheckpoint):
    """`best.ckpt` (weights only): the epoch with the best validation `monitor` so far (val_loss: lowest; the others:
    highest; the first epoch wins a tie). `fit` loads it back at the end (`trainer.restore_best`). Its score and path
    travel in `last.ckpt`, so a resumed job keeps comparing against the epochs before the interruption."""

    def __init__(self, dirpath: Path, monitor: str, keep: bool = True) -> None:
        self.keep = keep  # False: best.ckpt is removed once restored (no checkpoints kept)
        super().__init__(dirpath=dirpath, filename=BEST, monitor=monitor, mode="min" if monitor == "val_loss" else "max", save_top_k=1,
                         save_weights_only=True, every_n_epochs=1, enable_version_counter=False, auto_insert_metric_name=False)
        self.best_epoch: int | None = None  # 0-based epoch of best.ckpt
        self._best_step: int | None = None  # the optimizer step best.ckpt was saved at (this process)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self.best_epoch = trainer.current_epoch  # called for a new best only (save_top_k=1)
        self._best_step = trainer.global_step
        super()._save_checkpoint(trainer, filepath)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")

    def restore(self, trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> None:
        """After `trainer.fit`: load best.ckpt into `module` by validating it, so the trainer's val metrics are the
        best epoch's too (no validation yet, e.g. max_steps within the first epoch: the last weights stay; no optimizer
        step since best.ckpt was saved: the weights and the latest val metrics are already its own)."""
        if self.best_model_path and self._best_step == trainer.global_step:  # no step since: the weights are best.ckpt's
            log.info("the best weights are the last ones (epoch %s, best %s = %.4g): nothing to restore", self.best_epoch, self.monitor, float(self.best_model_score))
        elif self.best_model_path:
            n_weights = len(getattr(module, "epoch_weights", []))
            trainer.validate(module, datamodule=datamodule, ckpt_path=self.best_model_path, verbose=False, weights_only=True)
            del getattr(module, "epoch_weights", [])[n_weights:]  # that plot shows the epochs trained, not this repeat
            log.info("restored the weights of epoch %s (best %s = %.4g)", self.best_epoch, self.monitor, float(self.best_model_score))
        if not self.keep and trainer.is_global_zero:
            _remove(Path(self.dirpath) / f"{BEST}.ckpt")


def best_checkpoint(trainer_cfg, has_modality: bool, folder: Path | None) -> list[BestCheckpoint]:
    """[the callback keeping the best validation epoch] when `trainer.restore_best`, else []. `folder`: where
    best.ckpt goes (None: a scratch folder of this process)."""
    if not trainer_cfg.restore_best:
        return []
    if trainer_cfg.strategy != "auto" or trainer_cfg.devices != 1 or trainer_cfg.num_nodes > 1:
        # several processes: best.ckpt would be a sharded checkpoint that validate(ckpt_path=...) cannot load weights-only
        # (it asks for optimizer state) and each rank's scratch folder differs; such runs keep the last epoch for now
        log.warning("trainer.restore_best applies to single-process runs: this multi-process run keeps its last epoch's weights")
        return []
    if trainer_cfg.best_metric == "val_attribution_auroc" and not has_modality:
        raise ConfigError("trainer.best_metric=val_attribution_auroc needs data that says which modality carries each label (synthetic data); choose another, e.g. val_loss")
    return [BestCheckpoint(folder or Path(tempfile.mkdtemp(prefix="mmfusion-best-")), trainer_cfg.best_metric, keep=trainer_cfg.checkpoints and folder is not None)]


def rng_state() -> dict:
    """This process's random streams (torch CPU and CUDA, numpy, python) as tensors and ints: loadable with
    weights_only=True."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state((state["numpy"][0], state["numpy"][1].numpy().astype(np.uint32), *state["numpy"][2:]))
    random.setstate((state["python_version"], tuple(state["python"]), None))


def replace_checkpoint(new: Path, final: Path) -> None:
    """Put the complete checkpoint `new` in place of `final` so that some complete checkpoint exists at every instant.

    A file: one `os.replace`. A sharded checkpoint is a folder, which no single rename replaces: the current one is
    moved to `<final>.old` first and removed after; `resumable_checkpoint` takes `.old` if a kill fell in between.
    """
    if new.is_file():
        os.replace(new, final)
        return
    old = final.with_name(final.name + ".old")
    if final.exists():  # else `old` may be the only complete checkpoint (a kill between two renames): keep it
        _remove(old)
        os.replace(final, old)
    os.replace(new, final)
    _remove(old)


def resumable_checkpoint(dirpath: Path) -> Path | None:
    """The complete `last.ckpt` (file, or sharded folder with its metadata) in `dirpath`, else its `.old`, else None."""
    for path in (dirpath / LAST, dirpath / (LAST + ".old")):
        if path.is_file() or (path / SHARDED_META).is_file():
            return path
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class SamplerEpoch(L.Callback):
    """Sets the epoch of the training batch sampler too, at each epoch's start.

    Lightning calls `set_epoch` on a loader's sampler and on its batch sampler's inner sampler, not on the batch
    sampler itself; `LengthBucketBatchSampler` otherwise counts its passes from 0 in every process, so a resumed job
    would shuffle its batches as in epoch 0 (measured: different val_loss from the first resumed epoch on).
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = getattr(trainer.train_dataloader, "batch_sampler", None)
        if callable(getattr(batches, "set_epoch", None)):
            batches.set_epoch(trainer.current_epoch)
