"""LightningModule: loss, optimisation and exact evaluation around a `MultimodalClassifier`.

Evaluation collects (dataset index, probabilities, weights) per step, gathers them from all ranks at epoch end and
drops the duplicates that a padded distributed sampler adds, so metrics equal those of a single process.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from transformers import get_scheduler

from mmfusion.config import OptimConfig
from mmfusion.errors import ConfigError
from mmfusion.metrics import attribution_auroc, classification_metrics, faithfulness, modality_drops
from mmfusion.model import ModelOutput, MultimodalClassifier

MODEL_INPUTS = ("input_ids", "attention_mask", "chunk_mask", "numeric", "categorical", "chunk_embeddings")


class FusionClassifierModule(L.LightningModule):
    def __init__(self, model: MultimodalClassifier, optim: OptimConfig, n_classes: int) -> None:
        super().__init__()
        self.model, self.optim, self.n_classes = model, optim, n_classes
        weights = None
        if optim.class_weights is not None:
            if len(optim.class_weights) != n_classes:
                raise ConfigError(f"optim.class_weights has {len(optim.class_weights)} values but the data has {n_classes} classes")
            weights = torch.tensor(optim.class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.results: dict[str, dict[str, torch.Tensor]] = {}  # per split: de-duplicated outputs of the last evaluation
        self._collected: list[dict[str, torch.Tensor]] = []
        self.epoch_weights: list[torch.Tensor] = []  # val w_text per epoch, for "how the weights moved" plots

    def forward(self, batch: dict) -> ModelOutput:
        return self.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch)
        loss = F.cross_entropy(out.logits.float(), batch["label"], weight=self.class_weights) + out.aux_loss
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    # ---- evaluation ----------------------------------------------------------------------------------------------

    def _collect(self, batch: dict) -> None:
        enc = self.model.encode(*(batch.get(k) for k in MODEL_INPUTS))  # encode once, fuse three times
        h_text, chunks, h_tab = enc
        out = self.model.classify(h_text, h_tab, chunks, batch["chunk_mask"])
        probs = out.logits.float().softmax(-1)
        row = {"index": batch["index"], "label": batch["label"], "modality": batch["modality"], "probs": probs, "weights": out.modality_weights.float()}
        if out.expert_weights is not None:
            row["experts"] = out.expert_weights.float()
        row["drop_text"], row["drop_tab"] = modality_drops(self.model, enc, batch, probs)
        self._collected.append(row)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._collect(batch)

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        self._collect(batch)

    def _gather(self) -> dict[str, torch.Tensor]:
        local = {k: torch.cat([r[k] for r in self._collected]) for k in self._collected[0]}
        self._collected = []
        if self.trainer.world_size > 1:
            local = {k: v.flatten(0, 1) for k, v in self.all_gather(local).items()}  # (world * N, ...)
        order = torch.argsort(local["index"], stable=True)
        local = {k: v[order] for k, v in local.items()}
        first = torch.ones_like(local["index"], dtype=torch.bool)
        first[1:] = local["index"][1:] != local["index"][:-1]  # drop sampler padding duplicates
        return {k: v[first].cpu() for k, v in local.items()}

    def _finish(self, split: str) -> None:
        if not self._collected:
            return
        res = self._gather()
        self.results[split] = res
        if split == "predict":  # outputs only: Lightning does not log from predict
            return
        metrics = classification_metrics(res["probs"], res["label"], None if self.class_weights is None else self.class_weights.cpu())
        metrics["faithfulness"] = faithfulness(res["weights"][:, 0], res["drop_text"], res["drop_tab"])
        att = attribution_auroc(res["weights"][:, 0], res["modality"])
        if att is not None:
            metrics["attribution_auroc"] = att
        self.log_dict({f"{split}_{k}": v for k, v in metrics.items()}, prog_bar=split == "val", rank_zero_only=True)
        if split == "val" and not self.trainer.sanity_checking:
            self.epoch_weights.append(res["weights"][:, 0].clone())

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def on_predict_epoch_end(self) -> None:
        self._finish("predict")

    # ---- optimisation ----------------------------------------------------------------------------------------------

    def configure_optimizers(self):
        groups = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            encoder = name.startswith("text_encoder.")
            decay = p.ndim >= 2  # no weight decay on biases and norm weights
            key = (encoder, decay)
            groups.setdefault(key, {"params": [], "lr": self.optim.encoder_lr if encoder else self.optim.lr, "weight_decay": self.optim.weight_decay if decay else 0.0})
            groups[key]["params"].append(p)
        optimizer = torch.optim.AdamW(list(groups.values()))
        total = int(self.trainer.estimated_stepping_batches)
        name = "linear" if self.optim.schedule == "linear" else "constant_with_warmup"
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=int(self.optim.warmup_fraction * total), num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
