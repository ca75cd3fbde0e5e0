"""The sections of a run's config: data, model, optim, trainer, tracking, export."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from mmfusion.config.base import _CONTROL, DEFAULT_TEXT_ENCODER, PositiveFloat, Seed, Strict, _folder
from mmfusion.config.legacy import upgrade_model
from mmfusion.config.study import STUDY_METRICS
from mmfusion.tracking.contract import model_name_problem


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
    text_columns: list[str] | None = Field(None, min_length=1)  # several text columns (e.g. [title, review]); null: [text_column]
    numeric_columns: list[str] | None = None  # None: the synthetic set's columns; [] for a table means none
    categorical_columns: list[str] | None = None
    label_column: str = "label"
    id_column: str | None = None
    max_chunks: int = Field(8, ge=1)
    chunk_len: int = Field(64, ge=8, le=512)  # also at most the text encoder's positions (checked when it loads)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    num_workers: int = Field(0, ge=0)
    # before standardising (data/tabular.py); auto: per column, the one whose cross-validated logistic regression on
    # the training rows predicts the label best (ties: the simpler); a run records each column's choice in
    # `numeric_transforms`, so its logged config rebuilds the same model
    numeric_transform: Literal["standard", "log", "quantile", "auto"] = "standard"
    numeric_transforms: dict[str, Literal["standard", "log", "quantile"]] = Field(default_factory=dict)  # column -> transform, over numeric_transform
    min_category_count: int = Field(1, ge=1)  # rarer categories in the training split map to the unknown index
    bucket_by_length: bool = True  # train batches of similar-length dialogues (less padding to encode)
    split_seed: Seed | None = None  # seed of the synthetic data and the train/val/test split; null: the run's `seed`
    cache_dir: str | None = ".mmfusion_cache"  # chunk embeddings of a frozen encoder; null disables
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("text_columns")
    @classmethod
    def _distinct_text_columns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"lists a column twice: {value}")
        return value

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
    """Shared model keys, plus the chosen fusion variant and its own options (`mmfusion fusions` lists both).

    `fusion` names a variant or a preset; validation resolves a preset to its variant (kept in `fusion_preset`) with
    the preset's options under `fusion_options`. `fusion_options` is checked against the variant's own options model
    and holds all of them once validated (defaults filled in): what a run logs, and what rebuilds it. The flat keys of
    older configs (`model.router`, ...) are mapped by `legacy.py`.
    """

    fusion: str = "concat"
    fusion_preset: str | None = None
    fusion_options: dict[str, Any] = Field(default_factory=dict, validate_default=True)  # defaults filled in too
    text_encoder: str = DEFAULT_TEXT_ENCODER  # a Hugging Face name or a local path
    # how many top layers of the text encoder train: 0 = frozen (chunk embeddings cached), K = the hidden states
    # entering layer L-K are cached and only the top K layers train (embeddings and lower layers frozen, eval mode),
    # "all" = full fine-tuning (embeddings included). At most the encoder's layer count (checked when it loads).
    # `freeze_text_encoder` is its old spelling (true = 0, false = all; legacy.py)
    train_text_layers: int | Literal["all"] = "all"
    chunk_pooling: Literal["mean", "attention"] = "mean"  # how chunk embeddings make h_text; mean: the original design
    # several text columns: joint = all of a row's chunks pooled together; separate = each column's chunks pooled on
    # their own, the column vectors side by side projected to H (encoders/columns.py; results/real/quickstart_sweep/)
    column_pooling: Literal["joint", "separate"] = "joint"
    fusion_dim: int = Field(128, ge=2)
    tab_hidden: int = Field(128, ge=2)
    tab_dim: int = Field(64, ge=2)
    category_embed_dim: int = Field(8, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.0, ge=0.0, le=0.5)  # per training sample: P(text removed) = P(table removed)
    # The text encoder's own dropout (results/bench.md, "training speed"). null keeps the backbone's (MiniLM: 0.1).
    text_dropout: float | None = Field(None, ge=0.0, lt=1.0)  # embeddings, attention output, feed-forward output
    # on the attention probabilities: > 0 makes CPU SDPA leave its fused kernel for the math path (~3x slower)
    text_attention_dropout: float | None = Field(0.0, ge=0.0, lt=1.0)
    fast_dropout: bool = True  # the text encoder's dropout masks drawn 16 bits at a time (encoders/text.py FastDropout)
    pack_groups: int = Field(4, ge=1)  # real chunks encoded in at most this many length groups, each padded to its own longest

    @model_validator(mode="before")
    @classmethod
    def _resolve_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        from mmfusion.fusion import PRESETS

        data = upgrade_model(data)
        name, given = data.get("fusion", "concat"), data.get("fusion_preset")
        preset = name if isinstance(name, str) and name in PRESETS else None
        if preset and given not in (None, preset):
            raise ValueError(f"model.fusion is the preset {preset!r} but model.fusion_preset is {given!r}: set one of them")
        preset = preset or given
        if preset is None:
            return data
        variant = PRESETS[preset].variant if preset in PRESETS else None
        if variant is None or (preset == given and name != variant):
            presets = sorted(p for p, v in PRESETS.items() if v.variant == name)
            raise ValueError(f"model.fusion_preset: {preset!r} is not a preset of fusion {name!r}; its presets: {', '.join(presets) or 'none'}")
        options = data.get("fusion_options") or {}
        options = {**PRESETS[preset].options, **options} if isinstance(options, dict) else options
        return {**data, "fusion": variant, "fusion_preset": preset, "fusion_options": options}

    @field_validator("train_text_layers", mode="before")
    @classmethod
    def _text_layers(cls, value: Any) -> Any:
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError("must be 0 (frozen encoder), a number of top encoder layers to train (at most the encoder's layer count), or 'all'")

    @property
    def text_frozen(self) -> bool:
        """The whole text encoder frozen: its chunk embeddings come from the embedding cache."""
        return self.train_text_layers == 0

    @field_validator("fusion")
    @classmethod
    def _known_fusion(cls, name: str) -> str:
        from mmfusion.fusion import resolve_fusion

        resolve_fusion(name)  # raises, naming the variants and presets
        return name

    @field_validator("fusion_options")
    @classmethod
    def _own_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from mmfusion.fusion import FUSIONS

        name = info.data.get("fusion")
        if name not in FUSIONS:
            return options  # the fusion itself is wrong: that error is enough
        model = FUSIONS.get(name).Options
        try:
            return model.model_validate(options).model_dump(mode="json")
        except ValidationError as err:
            raise ValueError("; ".join(_option_problem(name, model, e) for e in err.errors())) from None

    @model_validator(mode="after")
    def _check_options(self) -> "ModelConfig":
        from mmfusion.fusion import FUSIONS

        FUSIONS.get(self.fusion).Options.model_validate(self.fusion_options).check(self)
        return self


def _option_problem(fusion: str, model: type, err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        fields = ", ".join(f"{k} (default {f.default!r})" for k, f in model.model_fields.items())
        return f"{key!r} is not an option of fusion {fusion!r}; " + (f"its options: {fields}" if fields else "it has no options")
    got = err.get("input")
    return f"{key} of fusion {fusion!r}: {err['msg'].removeprefix('Value error, ')}" + ("" if isinstance(got, dict) else f" (got {got!r})")


class OptimConfig(Strict):
    lr: float = Field(1e-3, gt=0.0)  # fusion, tabular encoder and head
    encoder_lr: float = Field(3e-5, gt=0.0)  # the pretrained text encoder
    weight_decay: float = Field(0.01, ge=0.0)
    schedule: Literal["linear", "constant"] = "linear"
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # one per class (sorted class names), each finite and > 0; "balanced": n_train / (n_classes * n_train_of_class)
    class_weights: list[PositiveFloat] | Literal["balanced"] | None = None
    # AdamW's implementation: fused (one kernel over all parameters; CPU and GPU), foreach (a few ops per group), or
    # for-loop (torch's CPU default: ~10 small ops per parameter tensor); results agree to float rounding. auto: fused
    # under fp32, foreach under mixed precision (Lightning refuses to clip the gradients of a fused optimizer there)
    adamw_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"


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
    # at the end of training, load the weights of the epoch with the best `best_metric` on the validation split (not
    # the last epoch's): what is tested, exported and logged; val_loss: lowest, the others: highest
    restore_best: bool = True
    best_metric: Literal[STUDY_METRICS] = "val_loss"
    # intra-op CPU threads of each process (torch.set_num_threads); null: torch's default, one per physical core. On a
    # CPU shared with other jobs, fewer threads than cores avoids OpenMP threads spinning on preempted peers
    threads: int | None = Field(None, ge=1)
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
    run_name: str | None = None  # null: <fusion or preset>-<data>-s<seed> (study trials: <study>-t<number>)
    log_model: bool = True
    register_as: str | None = None  # also register the run's model under this name, alias @best (needs log_model)
    system_metrics: bool | None = None  # MLflow's CPU/RAM/GPU metrics; null: on for training runs, off for study trials

    @field_validator("experiment", "run_name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and (_CONTROL.search(value) or not value.strip()):
            raise ValueError("must be non-empty, without control characters (newlines, tabs, ...)")
        return value

    @field_validator("register_as")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        problem = model_name_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _registered_needs_model(self) -> "TrackingConfig":
        if self.register_as is not None and not self.log_model:
            raise ValueError("tracking.register_as needs tracking.log_model=true (there is no model to register otherwise)")
        return self


class ExportConfig(Strict):
    onnx: bool = True  # every run exports to ONNX and proves parity with PyTorch
    quantize: bool = False  # also an int8 dynamically quantized model, with its own accuracy figures
    tolerance: float = Field(1e-4, gt=0.0)  # max |ONNX - PyTorch| (probabilities and weights, fp32)
