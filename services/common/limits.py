"""Request limits enforced by every service: the one source of truth (the protos' comments repeat them)."""

from __future__ import annotations

from typing import Final

MAX_IMAGE_BYTES: Final = 4 * 1024 * 1024
MAX_IMAGE_SIDE: Final = 1024
MAX_ID_LENGTH: Final = 128
MAX_GROUP_USERS: Final = 1024
MAX_SCORE_ITEMS: Final = 256
MAX_K: Final = 1000
MAX_FILTER_VALUES: Final = 64
MAX_EXCLUDED_IDS: Final = 10_000
MAX_DESIGNS: Final = 16
MAX_SHIFTS: Final = 12
MAX_OPT_STEPS: Final = 500
MAX_INVERSION_STEPS: Final = 2000
MAX_RESTARTS: Final = 16
MAX_TEXT_CHARS: Final = 256
MAX_INDEX_BATCH: Final = 512
MAX_DELETE_IDS: Final = 10_000
MAX_RADIUS: Final = 8.0
MAX_WEIGHT: Final = 100.0
MAX_REPORT_EVERY: Final = 100
MAX_PRODUCTS_PER_DESIGN: Final = 100
MAX_COMPETITORS: Final = 50

#: Default k of TOP_K_SHARE (DesignRequest.top_k = 0): the latent service optimises for it and the
#: orchestrator resolves the users' k-th best scores for it.
DEFAULT_TOP_K: Final = 10
