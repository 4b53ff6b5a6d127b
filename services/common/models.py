"""Names of the models in the model repository: shared by the exporter and the services (no torch).

Every image tensor a model takes or returns is float32 NCHW in [-1, 1] at the catalogue resolution.
The category list (names and one-hot order) is not a constant: it comes from the training data and
travels in the models' metadata (:mod:`couturier.services.common.model_metadata`).
"""

from __future__ import annotations

from typing import Final

ITEM_ENCODER: Final = "item_encoder"  # DVBPR Phi: image -> item vector (scoring)
GENERATOR: Final = "generator"  # conditional GAN G(z, category one-hot) -> image
DISCRIMINATOR: Final = "discriminator"  # D(image, category one-hot) -> realism
RETRIEVAL_ENCODER: Final = "retrieval_encoder"  # InfoGAN-discriminator trunk -> L2-normalised embedding
TEXT_ENCODER: Final = "text_encoder"  # MiniLM: (input_ids, attention_mask) -> 384-d sentence vector
QUERY_GENERATOR: Final = "query_generator"  # SynthTriplet: (image, text vector) -> synthetic query image
PREF_GRAD: Final = "pref_grad"  # preference objective and d/dz
INV_GRAD: Final = "inv_grad"  # inversion loss and d/dz
SHIFT_GRAD: Final = "shift_grad"  # GIGS shift objective and d/dshifts
# Loop models: K Adam steps of the latent optimisers in one call (an ONNX Loop around the gradient
# model of the same objective; couturier.export.loop_models writes them and their signatures).
PREF_LOOP: Final = "pref_loop"  # K steps of preference maximisation (around pref_grad)
INV_LOOP: Final = "inv_loop"  # K steps of GAN inversion (around inv_grad)
SHIFT_LOOP: Final = "shift_loop"  # K steps of GIGS seller shifts (around shift_grad)

FORWARD_MODELS: Final = (ITEM_ENCODER, GENERATOR, DISCRIMINATOR, RETRIEVAL_ENCODER, TEXT_ENCODER, QUERY_GENERATOR)
GRADIENT_MODELS: Final = (PREF_GRAD, INV_GRAD, SHIFT_GRAD)
LOOP_MODELS: Final = (PREF_LOOP, INV_LOOP, SHIFT_LOOP)
#: The gradient model each loop model runs (the two are exported together from the same weights).
LOOP_GRADIENT: Final = {PREF_LOOP: PREF_GRAD, INV_LOOP: INV_GRAD, SHIFT_LOOP: SHIFT_GRAD}
ALL_MODELS: Final = FORWARD_MODELS + GRADIENT_MODELS + LOOP_MODELS
#: The models that take a category one-hot: each carries its category list in its metadata.
CATEGORY_MODELS: Final = (GENERATOR, DISCRIMINATOR, PREF_GRAD, INV_GRAD, SHIFT_GRAD, PREF_LOOP, INV_LOOP, SHIFT_LOOP)
