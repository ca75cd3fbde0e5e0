"""LightningModule: loss, optimisation and exact evaluation around a `MultimodalClassifier`.

Evaluation collects (dataset index, probabilities, weights) per step, gathers them from all ranks at epoch end and
drops the duplicates that a padded distributed sampler adds, so metrics equal those of a single process.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from transformers import get_scheduler

from mmfusion.config import OptimConfig
from mmfusion.errors import ConfigError
from mmfusion.modeling.metrics import attribution_auroc, classification_metrics, faithfulness, modality_drops
from mmfusion.modeling.classifier import ModelOutput, MultimodalClassifier, blank_modalities

MODEL_INPUTS = ("input_ids", "attention_mask", "chunk_mask", "numeric", "categorical", "chunk_embeddings", "chunk_column", "text_hidden")


def check_class_weights(optim: OptimConfig, n_classes: int) -> None:
    """One weight per class, "balanced", or none: a wrong length is an error, never padded or cut."""
    if isinstance(optim.class_weights, list) and len(optim.class_weights) != n_classes:
        raise ConfigError(f"optim.class_weights has {len(optim.class_weights)} values but the data has {n_classes} classes")


def class_weights(optim: OptimConfig, class_counts: list[int] | None) -> list[float] | None:
    """The loss's class weights: as configured, or "balanced" from the training split's class counts (sklearn's
    n_samples / (n_classes * count), so a balanced split gets weights of 1)."""
    if optim.class_weights != "balanced":
        return optim.class_weights
    if not class_counts:
        raise ConfigError("optim.class_weights=balanced needs the training split's class counts (a preprocessing.json written before they were recorded)")
    total, k = sum(class_counts), len(class_counts)
    return [total / (k * n) for n in class_counts]


def transformer_layers(backbone: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face encoder (BERT: encoder.layer), the unit FSDP shards."""
    for name, module in backbone.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layer", "layers", "h", "blocks") and len(module):
            return list(module)
    return []


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, mixed_precision: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: the pretrained encoder at `encoder_lr`, the rest at `lr`; no weight decay
    on biases and norm weights. The one optimizer of training and of `mmfusion bench`.

    `mixed_precision`: the run trains under a mixed-precision plugin, whose gradient clipping Lightning refuses for a
    fused optimizer ("performs unscaling of gradients internally"): `adamw_impl=auto` then takes foreach."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        encoder = name.startswith("text_encoder.")
        decay = p.ndim >= 2  # no weight decay on biases and norm weights
        key = (encoder, decay)
        groups.setdefault(key, {"params": [], "lr": optim.encoder_lr if encoder else optim.lr, "weight_decay": optim.weight_decay if decay else 0.0})
        groups[key]["params"].append(p)
    name = optim.adamw_impl if optim.adamw_impl != "auto" else ("foreach" if mixed_precision else "fused")
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[name]
    return torch.optim.AdamW(list(groups.values()), **impl)


class FusionClassifierModule(L.LightningModule):
    def __init__(self, model: MultimodalClassifier, optim: OptimConfig, n_classes: int, modality_dropout: float = 0.0, class_counts: list[int] | None = None) -> None:
        super().__init__()
        self.model, self.optim, self.n_classes = model, optim, n_classes
        self.modality_dropout = modality_dropout
        check_class_weights(optim, n_classes)
        weights = class_weights(optim, class_counts)
        weights = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.results: dict[str, dict[str, torch.Tensor]] = {}  # per split: de-duplicated outputs of the last evaluation
        self._collected: list[dict[str, torch.Tensor]] = []
        self.epoch_weights: list[torch.Tensor] = []  # val w_text per epoch, for "how the weights moved" plots

    def configure_model(self) -> None:
        """FSDP2: shard each encoder layer, then every module the steps call (under ModelParallelStrategy only). Under
        partial fine-tuning only what trains is sharded: the top layers; the frozen lower part stays whole on each rank."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = self.device_mesh["data_parallel"]
        m = self.model
        for layer in transformer_layers(m.text_encoder.backbone)[m.text_lower or 0 :]:
            if not isinstance(layer, FSDPModule):
                fully_shard(layer, mesh=mesh)
        for part in (None if m.text_lower is not None else m.text_encoder, m.tab_encoder, m.chunk_pool, m.column_embedding, m.column_pool, m.fusion, m.head):
            if part is not None and not isinstance(part, FSDPModule) and any(True for _ in part.parameters()):
                fully_shard(part, mesh=mesh)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """RNG states travel with the checkpoint so a resumed job draws the same dropout masks (as plain tensors/ints,
        loadable with weights_only=True)."""
        np_state = np.random.get_state()
        checkpoint["mmfusion_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("mmfusion_rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
            random.setstate((rng["python_version"], tuple(rng["python"]), None))

    def forward(self, batch: dict) -> ModelOutput:
        return self.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.modality_dropout:  # one draw per row: text removed, table removed, or (most often) neither
            u = torch.rand(len(batch["label"]), device=batch["label"].device)
            p = self.modality_dropout
            batch = blank_modalities(batch, u < p, (u >= p) & (u < 2 * p))
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
        """All ranks' outputs, sorted by dataset index, each sample once (sampler padding dropped)."""
        local = {k: torch.cat([r[k] for r in self._collected]) for k in self._collected[0]}
        self._collected = []
        if self.trainer.world_size > 1:  # ranks may hold different counts: pad to the largest, mark padding index -1
            n = len(local["index"])
            most = int(self.all_gather(torch.tensor(n, device=self.device)).max())
            padded = {k: torch.cat([v, v.new_full((most - n, *v.shape[1:]), -1)]) for k, v in local.items()}
            local = {k: v.flatten(0, 1) for k, v in self.all_gather(padded).items()}  # (world * most, ...)
            keep = local["index"] >= 0
            local = {k: v[keep] for k, v in local.items()}
        order = torch.argsort(local["index"], stable=True)
        local = {k: v[order] for k, v in local.items()}
        first = torch.ones_like(local["index"], dtype=torch.bool)
        first[1:] = local["index"][1:] != local["index"][:-1]  # drop the duplicates a padded sampler adds
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
        mixed = str(self.trainer.precision).endswith("-mixed")
        if mixed and self.optim.adamw_impl == "fused" and self.trainer.gradient_clip_val:
            raise ConfigError(f"optim.adamw_impl: fused cannot clip gradients under trainer.precision={self.trainer.precision} "
                              "(Lightning refuses it); use auto or foreach, or trainer.gradient_clip_val=null")
        optimizer = build_optimizer(self.model, self.optim, mixed_precision=mixed)
        total = int(self.trainer.estimated_stepping_batches)
        name = "linear" if self.optim.schedule == "linear" else "constant_with_warmup"
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=int(self.optim.warmup_fraction * total), num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
