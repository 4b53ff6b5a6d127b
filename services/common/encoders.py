"""Image encoders behind the inference backend: version resolution, preprocessing, batching."""

from __future__ import annotations

import numpy as np

from couturier.services.common.errors import PreconditionFailed, UnknownEntity, clip
from couturier.services.common.images import to_model_input
from couturier.services.common.inference import InferenceBackend, ModelNotReady
from couturier.services.common.validation import model_version_number

#: Images per inference call when embedding many (index batches are split into calls of this size).
ENCODE_BATCH = 64


class ImageEncoder:
    """One image -> vector model (``image (N,3,S,S)`` -> ``embedding (N,D)``) served by the backend."""

    def __init__(self, backend: InferenceBackend, model: str, pinned_version: str = "") -> None:
        self.backend = backend
        self.model = model
        self.pinned_version = pinned_version
        self._sizes: dict[str, int] = {}
        self._dims: dict[str, int] = {}

    async def version(self, requested: str = "") -> str:
        """The version to use: ``requested``, else the pinned one, else the newest the backend serves.

        A caller's ``requested`` version must be a number (InvalidInput) that the backend serves: one it
        does not serve is NOT_FOUND (UnknownEntity), not UNAVAILABLE, since retrying the same request
        cannot help until someone loads that version. The pinned version not being served stays
        UNAVAILABLE (a deployment problem, visible in health)."""
        if not requested:
            return await self.backend.resolve_version(self.model, self.pinned_version)
        model_version_number(requested, "encoder_version")
        try:
            return await self.backend.resolve_version(self.model, requested)
        except ModelNotReady as exc:
            raise UnknownEntity(
                f"encoder_version {requested} of {self.model} is not served by the model server ({clip(str(exc), 300)}); "
                "leave encoder_version empty for the served one, or load that version first"
            ) from exc

    async def image_size(self, version: str) -> int:
        if version not in self._sizes:
            shapes = await self.backend.input_shapes(self.model, version)
            self._sizes[version] = int(shapes["image"][-1])
        return self._sizes[version]

    async def dim(self, version: str) -> int:
        """The vector dimension D of ``version``, from the model's metadata (cached per version)."""
        if version not in self._dims:
            shape = (await self.backend.output_shapes(self.model, version)).get("embedding")
            if not shape or shape[-1] < 1:
                raise PreconditionFailed(
                    f"{self.model} v{version} declares no fixed embedding dimension (output 'embedding' has shape "
                    f"{shape}); publish a model whose output is (N, D) with a fixed D"
                )
            self._dims[version] = int(shape[-1])
        return self._dims[version]

    async def encode(self, images: list[np.ndarray], version: str) -> np.ndarray:
        """RGB uint8 images (any size) -> float32 (N, D) vectors, computed by ``version``."""
        size = await self.image_size(version)
        parts = []
        for start in range(0, len(images), ENCODE_BATCH):
            batch = to_model_input(images[start : start + ENCODE_BATCH], size)
            out = await self.backend.infer(self.model, {"image": batch}, ["embedding"], version=version)
            parts.append(np.asarray(out["embedding"], dtype=np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
