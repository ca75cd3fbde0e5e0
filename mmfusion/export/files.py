"""The files of an export, written and proven before anything is logged: `export_files(cfg, model, data, tokenizer, dir)`.

    dir/model/       model.onnx (chunk encoder) + extra_files/head.onnx (fusion + head): the logged model's layout
    dir/model_int8/  the same with the int8 encoder (fp32 head), when quantized
    dir/onnx/        onnx_meta.json (both graphs' sha256), preprocessing.json, tokenizer/: the run's `onnx/` folder

`OnnxPredictor(dir/model/model.onnx, dir/onnx)` scores from them as from a run's downloaded files. `log_onnx`
(tracking.py) logs them; `mmfusion bench --predict` scores from them without a run.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from mmfusion.export.onnx import OPSET, add_metadata, quantize_onnx
from mmfusion.export.packed import PackedFiles, export_packed
from mmfusion.export.parity import check_parity, int8_report, parity_batches
from mmfusion.hashing import sha256_bytes, sha256_file
from mmfusion.serving.onnx_scorer import META_FILE, PREPROCESSING_FILE, TOKENIZER_DIR, PackedScorer

if TYPE_CHECKING:
    from mmfusion.config import Config
    from mmfusion.data.datamodule import PreparedData
    from mmfusion.modeling.classifier import MultimodalClassifier


class ExportFiles(NamedTuple):
    fp32: PackedFiles
    int8: PackedFiles | None
    artifacts: Path  # the `onnx/` folder
    meta: dict  # what onnx_meta.json holds (the logged model ids are added by `log_onnx`)
    report: dict  # the parity report
    int8_report: dict | None
    example: dict  # one parity batch (the longest sample): the logged models' input example


def export_files(cfg: "Config", model: "MultimodalClassifier", data: "PreparedData", tokenizer, directory: str | Path, *, quantize: bool, tolerance: float,
                 on_failure=None) -> ExportFiles:
    """Export the packed pair, prove parity on held-out batches (ParityError above `tolerance`; `on_failure(report)`
    is called first), optionally quantize the encoder and measure it, and write every file under `directory`."""
    from mmfusion.data.chunking import DialogueChunker
    from mmfusion.export.parity import ParityError

    directory = Path(directory)
    pad_id = tokenizer.pad_token_id or 0
    held_out = data.splits["test"] if len(data.splits["test"].ids) else data.splits["val"]
    batches = parity_batches(held_out, pad_id)
    pre_text = data.preprocessor.to_json()
    started = time.perf_counter()
    fp32 = export_packed(model, batches[0], directory / "model")
    tags = {"fusion": cfg.model.fusion, "classes": json.dumps(data.preprocessor.classes), "preprocessing_sha256": sha256_bytes(pre_text.encode())}
    digest, head_digest = add_metadata(fp32.encoder, tags), add_metadata(fp32.head, tags)
    export_seconds = time.perf_counter() - started
    scorer = PackedScorer(*fp32)
    try:
        report = check_parity(model, scorer, batches, tolerance)
    except ParityError as err:
        if on_failure is not None:
            on_failure(err.report)
        raise
    report["export_seconds"] = export_seconds
    chunker = DialogueChunker(tokenizer, cfg.data.max_chunks, cfg.data.chunk_len)
    meta = {"format": "packed", "model_sha256": digest, "head_sha256": head_digest, "max_chunks": cfg.data.max_chunks, "chunk_len": cfg.data.chunk_len, "pad_id": pad_id,
            "cls_id": chunker.cls_id, "sep_id": chunker.sep_id, "classes": data.preprocessor.classes, "fusion": cfg.model.fusion, "inputs": list(scorer.inputs),
            "outputs": scorer.output_names, "opset": OPSET}
    int8 = q_report = None
    if quantize:  # the encoder only: the head is a few small MatMuls, int8 buys nothing there
        int8 = PackedFiles(quantize_onnx(fp32.encoder, directory / "model_int8" / fp32.encoder.name), directory / "model_int8" / fp32.head.relative_to(directory / "model"))
        int8.head.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fp32.head, int8.head)
        from torch.utils.data import DataLoader

        from mmfusion.data.datamodule import SplitDataset, collate

        loader = DataLoader(SplitDataset(held_out), batch_size=cfg.trainer.eval_batch_size, collate_fn=partial(collate, pad_id=pad_id))
        q_report = int8_report(scorer, PackedScorer(*int8), list(loader), fp32.encoder, int8.encoder)
        meta["int8_model_sha256"] = sha256_file(int8.encoder)
    artifacts = directory / "onnx"
    tokenizer.save_pretrained(artifacts / TOKENIZER_DIR)
    (artifacts / PREPROCESSING_FILE).write_text(pre_text)
    (artifacts / META_FILE).write_text(json.dumps(meta, indent=2))
    return ExportFiles(fp32, int8, artifacts, meta, report, q_report, batches[1])
