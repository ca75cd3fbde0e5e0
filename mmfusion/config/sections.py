"""The sections of a run's config: data, model, optim, trainer, tracking, export."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mmfusion.config.base import _CONTROL, DEFAULT_TEXT_ENCODER, PositiveFloat, Seed, Strict, _folder


class SyntheticConfig(Strict):
    n_samples: int = Field(2000, ge=20)
    n_classes: int = Field(2, ge=2, le=4)
    frac_both: float = Field(0.0, ge=0.0, le=1.0)
    text_signal: float = Field(1.0, ge=0.0, le=1.0)
    tab_signal: float = Field(2.0, ge=0.0)
    label_noise: float = Field(0.0, ge=0.0, le=1.0)
    missing_rate: float = Field(0.05, ge=0.0, lt=1.0)


class DataConfig(Strict):
    source: Literal["synthetic", "table"] = "synthetic"
    path: str | None = None
    test_path: str | None = None
    text_column: str = "dialogue"
    numeric_columns: list[str] | None = None  # None: the synthetic set's columns; [] for a table means none
    categorical_columns: list[str] | None = None
    label_column: str = "label"
    id_column: str | None = None
    max_chunks: int = Field(8, ge=1)
    chunk_len: int = Field(64, ge=8, le=512)  # also at most the text encoder's positions (checked when it loads)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    num_workers: int = Field(0, ge=0)
    numeric_transform: Literal["standard", "log", "quantile"] = "standard"  # before standardising; see data/tabular.py
    min_category_count: int = Field(1, ge=1)  # rarer categories in the training split map to the unknown index
    bucket_by_length: bool = True  # train batches of similar-length dialogues (less padding to encode)
    split_seed: Seed | None = None  # seed of the synthetic data and the train/val/test split; null: the run's `seed`
    cache_dir: str | None = ".mmfusion_cache"  # chunk embeddings of a frozen encoder; null disables
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("cache_dir")
    @classmethod
    def _cache_folder(cls, value: str | None) -> str | None:
        return _folder(value)

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.source == "table" and not self.path:
            raise ValueError("data.path is required when data.source is 'table'")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must leave at least 10% for training")
        return self


class ModelConfig(Strict):
    fusion: str = "concat"
    text_encoder: str = DEFAULT_TEXT_ENCODER  # a Hugging Face name or a local path
    freeze_text_encoder: bool = False
    chunk_pooling: Literal["mean", "attention"] = "mean"  # how chunk embeddings make h_text; mean: the original design
    fusion_dim: int = Field(128, ge=2)
    tab_hidden: int = Field(128, ge=2)
    tab_dim: int = Field(64, ge=2)
    category_embed_dim: int = Field(8, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.0, ge=0.0, le=0.5)  # per training sample: P(text removed) = P(table removed)
    router: Literal["linear", "mlp"] = "linear"
    routing: Literal["soft", "hard"] = "soft"
    gumbel_temperature: float = Field(1.0, gt=0.0)
    n_experts: int = Field(4, ge=2)
    top_k: int = Field(2, ge=1)
    load_balance_weight: float = Field(0.01, ge=0.0)
    attention_layers: int = Field(1, ge=1)
    attention_heads: int = Field(4, ge=1)

    @field_validator("fusion")
    @classmethod
    def _known_fusion(cls, name: str) -> str:
        from mmfusion.fusion import list_fusions

        if name not in list_fusions():
            raise ValueError(f"unknown fusion {name!r}; allowed: {', '.join(list_fusions())}")
        return name

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.n_experts % 2:
            raise ValueError("model.n_experts must be even (half the experts read text, half the table)")
        if self.fusion_dim % self.attention_heads:
            raise ValueError("model.fusion_dim must be divisible by model.attention_heads")
        return self


class OptimConfig(Strict):
    lr: float = Field(1e-3, gt=0.0)  # fusion, tabular encoder and head
    encoder_lr: float = Field(3e-5, gt=0.0)  # the pretrained text encoder
    weight_decay: float = Field(0.01, ge=0.0)
    schedule: Literal["linear", "constant"] = "linear"
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # one per class (sorted class names), each finite and > 0; "balanced": n_train / (n_classes * n_train_of_class)
    class_weights: list[PositiveFloat] | Literal["balanced"] | None = None


class TrainerConfig(Strict):
    max_epochs: int = Field(3, ge=1)
    max_steps: int = Field(-1, ge=-1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = 1
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    num_nodes: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(1.0, gt=0.0)
    deterministic: bool = True
    log_every_n_steps: int = Field(10, ge=1)
    enable_progress_bar: bool = True
    output_dir: str = "outputs"  # checkpoints and job files, under <output_dir>/<run_id>/
    checkpoints: bool = True  # (sharded under fsdp) each epoch and at the end; `train --resume RUN_ID` continues
    checkpoint_every_n_steps: int | None = Field(None, ge=1)  # also every N optimizer steps; a resume from mid-epoch is not exact (the epoch restarts its data order)
    compile: bool = False  # torch.compile the text encoder; measured slower on CPU after a 2-3 min compile (results/bench.md)

    @field_validator("output_dir")
    @classmethod
    def _output_folder(cls, value: str) -> str:
        return _folder(value)

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be a number of devices (at least 1) or 'auto'")
        return value


class TrackingConfig(Strict):
    experiment: str = Field("mmfusion", min_length=1)
    uri: str | None = None  # MLFLOW_TRACKING_URI wins when set; default sqlite:///mlflow.db
    run_name: str | None = None
    log_model: bool = True

    @field_validator("experiment", "run_name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and (_CONTROL.search(value) or not value.strip()):
            raise ValueError("must be non-empty, without control characters (newlines, tabs, ...)")
        return value


class ExportConfig(Strict):
    onnx: bool = True  # every run exports to ONNX and proves parity with PyTorch
    quantize: bool = False  # also an int8 dynamically quantized model, with its own accuracy figures
    tolerance: float = Field(1e-4, gt=0.0)  # max |ONNX - PyTorch| (probabilities and weights, fp32)
