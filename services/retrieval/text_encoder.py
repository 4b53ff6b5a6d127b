"""The text side of multimodal search: a torch-free tokeniser and the text encoder on the inference backend.

The text encoder is all-MiniLM-L6-v2 exported to ONNX (``input_ids``, ``attention_mask`` ->
mean-pooled, L2-normalised 384-d ``sentence_embedding``). The tokeniser is the ``tokenizers`` package on
the ``tokenizer.json`` that the ``export`` subcommand of couturier publishes beside the model. These constants are the one
definition of the model's interface; the exporter imports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from couturier.services.common.errors import PreconditionFailed
from couturier.services.common.inference import InferenceBackend
from couturier.services.common.models import TEXT_ENCODER
from couturier.v1 import common_pb2

EMBED_DIM = 384
MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for this model
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"


class Tokenizer:
    """BERT WordPiece tokeniser (``tokenizers``, no torch) matching sentence-transformers' inputs."""

    def __init__(self, tokenizer_json: Path | str, max_length: int = MAX_SEQ_LENGTH) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(tokenizer_json))
        self._tok.enable_truncation(max_length=max_length)
        self._tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Batch of strings -> {"input_ids", "attention_mask"} int64 arrays (B, T)."""
        if isinstance(texts, str):
            raise TypeError("pass a sequence of strings, not one string")
        enc = self._tok.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        }


class TextEncoder:
    """Tokeniser (``tokenizer.json``) + the text encoder on the inference backend."""

    def __init__(self, backend: InferenceBackend, tokenizer_json: str, pinned_version: str = "") -> None:
        self.backend = backend
        self.tokenizer_json = Path(tokenizer_json)
        self.pinned_version = pinned_version
        self._tokenizer: Tokenizer | None = None

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            if not self.tokenizer_json.is_file():
                raise PreconditionFailed(
                    f"tokenizer {self.tokenizer_json} is missing; the export subcommand of couturier publishes it beside the text "
                    "encoder (set COUTURIER_RETRIEVAL_TOKENIZER_JSON)"
                )
            self._tokenizer = Tokenizer(self.tokenizer_json)
        return self._tokenizer

    async def encode(self, text: str) -> tuple[np.ndarray, common_pb2.ModelVersion]:
        version = await self.backend.resolve_version(TEXT_ENCODER, self.pinned_version)
        out = await self.backend.infer(TEXT_ENCODER, self.tokenizer()([text]), [OUTPUT_NAME], version=version)
        return np.asarray(out[OUTPUT_NAME], np.float32), common_pb2.ModelVersion(name=TEXT_ENCODER, version=version)
