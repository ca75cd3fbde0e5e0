"""trainer.restore_best: the model that is tested, exported and logged is the best validation epoch's."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from mmfusion.config import load_config
from mmfusion.data.datamodule import prepare_data
from mmfusion.encoders import load_tokenizer
from mmfusion.errors import ConfigError
from mmfusion.training.fit import fit


class SpoilLastEpoch(L.Callback):
    """Scrambles the head just before the last epoch's validation: that epoch is then certainly not the best."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == trainer.max_epochs - 1 and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            with torch.no_grad():
                pl_module.model.head.weight.copy_(torch.randn_like(pl_module.model.head.weight) * 50)


class ValHistory(L.Callback):
    def __init__(self) -> None:
        self.val_loss: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after this epoch's validation
        self.val_loss.append(float(trainer.callback_metrics["val_loss"]))


def _fit(overrides: list[str], tmp_path, checkpoints: bool):
    cfg = load_config(None, [*overrides, "trainer.max_epochs=3", f"trainer.checkpoints={str(checkpoints).lower()}", "seed=3"])
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    history = ValHistory()
    result = fit(cfg, data, [SpoilLastEpoch(), history], checkpoint_dir=tmp_path / "ckpt" if checkpoints else None, pad_id=tokenizer.pad_token_id)
    return result, history.val_loss


@pytest.mark.parametrize("checkpoints", [True, False])
def test_the_final_model_is_the_best_validation_epochs(tiny_overrides, tmp_path, checkpoints):
    result, val_loss = _fit([*tiny_overrides, "model.fusion=concat"], tmp_path, checkpoints)
    best = min(range(len(val_loss)), key=val_loss.__getitem__)
    assert best != len(val_loss) - 1, f"the setup should make an earlier epoch the best: {val_loss}"
    assert result.cost_metrics["restored_epoch"] == best
    assert result.metrics["val_loss"] == pytest.approx(val_loss[best], abs=1e-6)  # re-validated: the restored weights
    assert len(result.module.epoch_weights) == len(val_loss)  # one per epoch trained, not per validation
    kept = sorted(p.name for p in (tmp_path / "ckpt").iterdir()) if checkpoints else []
    assert kept == (["best.ckpt", "last.ckpt"] if checkpoints else [])


def test_without_restore_the_last_epoch_stays(tiny_overrides, tmp_path):
    result, val_loss = _fit([*tiny_overrides, "trainer.restore_best=false"], tmp_path, checkpoints=False)
    assert result.metrics["val_loss"] == pytest.approx(val_loss[-1], abs=1e-6) and "restored_epoch" not in result.cost_metrics


def test_attribution_auroc_on_a_table_is_a_config_error(tiny_overrides, tmp_path):
    from mmfusion.training.callbacks import best_checkpoint

    cfg = load_config(None, [*tiny_overrides, "trainer.best_metric=val_attribution_auroc"])
    with pytest.raises(ConfigError, match="trainer.best_metric=val_attribution_auroc needs data"):
        best_checkpoint(cfg.trainer, has_modality=False, folder=tmp_path)
    assert best_checkpoint(cfg.trainer, has_modality=True, folder=tmp_path)[0].mode == "max"


def test_restore_best_is_off_for_multi_process_runs():
    """A sharded best.ckpt cannot be loaded back weights-only by validate(): multi-process runs keep their last epoch."""
    from mmfusion.config import load_config
    from mmfusion.training.callbacks import best_checkpoint

    assert len(best_checkpoint(load_config(None, []).trainer, True, None)) == 1
    for overrides in (["trainer.strategy=fsdp", "trainer.devices=2"], ["trainer.devices=2"], ["trainer.strategy=ddp"]):
        assert best_checkpoint(load_config(None, overrides).trainer, True, None) == [], overrides


class CountValidations(L.Callback):
    def __init__(self) -> None:
        self.n = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.n += 1


def test_when_the_last_epoch_is_the_best_nothing_is_validated_again(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "trainer.max_epochs=1", "trainer.checkpoints=false", "seed=3"])
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    data = prepare_data(cfg.data, cfg.seed, tokenizer)
    history, validations = ValHistory(), CountValidations()
    result = fit(cfg, data, [history, validations], pad_id=tokenizer.pad_token_id)
    assert validations.n == 1  # the epoch's own validation only: its weights are the best ones already
    assert result.cost_metrics["restored_epoch"] == 0 and result.metrics["val_loss"] == pytest.approx(history.val_loss[0], abs=1e-6)
