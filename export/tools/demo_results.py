"""What the main job (``couturier demo``) collects: one dataclass per report section.

:mod:`couturier.export.tools.demo` fills a :class:`DemoResults`; :mod:`couturier.export.tools.demo_report`
renders it as HTML and markdown, and writes it as JSON (:func:`dataclasses.asdict`, image bytes left
out). Images are PNG ``bytes``. A section that is ``None`` (or empty) was not collected; ``errors``
then says why, keyed by the section id of :data:`couturier.export.tools.demo_report.SECTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Item:
    """A product or an image shown as a tile; scores are those of the reply that listed it."""

    product_id: str = ""
    category: str = ""
    colour: str = ""
    image: bytes | None = None
    #: Image similarity (search score, or the similarity of a nearest product to a design).
    similarity: float | None = None
    #: The audience's preference for the product.
    preference: float | None = None


# -- stages before the flows --------------------------------------------------------------------------


@dataclass
class DataSummary:
    """The prepared data the demo ran on."""

    catalogue_items: int
    heldout_items: int
    users: int
    categories: list[str]
    colours: list[str]
    manifest: dict[str, Any] = field(default_factory=dict)
    #: The dataset: its name, where it came from, and whether it is real or simulated.
    name: str = "simulated demo world"
    source: str = "Fashion-MNIST images with simulated colours and shoppers"
    provenance: str = "simulated"


@dataclass
class ModelsSummary:
    """What the models stage did (train / export / publish) and the versions it serves."""

    run_dir: str
    #: The shipped models were installed into ``run_dir`` (``export/shipped/<profile>``), and why.
    installed: bool = False
    install_reason: str = ""
    trained: bool = False
    training_reason: str = ""
    training_s: float | None = None
    exported: bool = False
    export_reason: str = ""
    export_s: float | None = None
    #: Models whose ONNX parity check failed.
    parity_failed: list[str] = field(default_factory=list)
    published: bool = False
    publish_reason: str = ""
    #: Model -> version served.
    versions: dict[str, str] = field(default_factory=dict)
    user_vectors: str = ""


@dataclass
class IndexSide:
    """One vector space's answer to IndexCatalogue."""

    upserted: int
    total: int
    encoder: str


@dataclass
class Indexing:
    """The catalogue streamed through the orchestrator's IndexCatalogue."""

    items: int
    seconds: float
    items_per_s: float
    scoring: IndexSide
    retrieval: IndexSide
    #: Category -> products in the retrieval index.
    per_category: dict[str, int] = field(default_factory=dict)


# -- flows --------------------------------------------------------------------------------------------


@dataclass
class TrainedShopperRecommendations:
    """Recommend for a shopper the model was trained on."""

    user_id: str
    purchases: list[Item]
    n_purchases: int
    products: list[Item]
    model: str
    folded_in: bool
    latency_ms: float
    share_bought_category: float | None


@dataclass
class NewShopperRecommendations:
    """Recommend for a new shopper folded in from a few liked products."""

    user_id: str
    liked: list[Item]
    liked_colour: str
    liked_category: str
    products: list[Item]
    folded_in: bool
    latency_ms: float
    share_same_colour: float | None
    share_same_category: float | None


@dataclass
class Recommendations:
    user: TrainedShopperRecommendations | None = None
    new_user: NewShopperRecommendations | None = None


@dataclass
class Design:
    """One generated design and the nearest real products to it."""

    image: bytes
    objective: float
    preference_before: float
    preference_after: float
    realism: float
    products: list[Item]


@dataclass
class DesignRun:
    """One DesignAndShop call: its audience, settings and designs."""

    title: str
    audience: str
    category: str
    objective_name: str
    latency_ms: float
    designs: list[Design]
    steps: int | None = None
    #: TOP_K_SHARE runs: the k of the objective, the group and the median k-th best score to beat.
    top_k: int | None = None
    users: list[str] = field(default_factory=list)
    median_threshold: float | None = None


@dataclass
class Designs:
    user: DesignRun | None = None
    group: DesignRun | None = None


@dataclass
class AlterFrame:
    """One reported step of the Alter stream with the shopper's preference for its image."""

    phase: str  # AlterProgress.Phase name: INVERSION, OPTIMIZATION or DONE
    step: int
    image: bytes
    reconstruction_loss: float | None = None  # INVERSION and DONE frames
    objective: float | None = None  # what the latent service reported (OPTIMIZATION and DONE frames)
    preference: float | None = None  # ScoreItems on the frame's image


@dataclass
class AlterationTrajectory:
    """Alter: an existing product inverted, then optimised for one shopper."""

    user_id: str
    product: Item
    frames: list[AlterFrame]
    latency_ms: float
    first_message_ms: float
    preference_original: float | None
    preference_inverted: float | None
    preference_final: float | None
    reconstruction_loss_final: float | None

    @property
    def messages(self) -> int:
        return len(self.frames)


@dataclass
class SellerVariant:
    """One GIGS variant and the existing products it would compete with."""

    image: bytes
    preference_before: float
    preference_after: float
    preference_shift: float
    opposite_ssim: float
    shift_norm: float
    competitors: list[Item]


@dataclass
class SellerVariants:
    """SellerFeedback for one product and a segment of shoppers."""

    product: Item
    users: list[str]
    audience: str
    settings: str
    latency_ms: float
    base_image: bytes
    base_preference: float
    original_preference: float | None
    item_competitors: list[Item]
    variants: list[SellerVariant]


@dataclass
class MultimodalQuery:
    """One MultimodalShop call: held-out image + text, the synthetic query and the re-ranked hits."""

    text: str
    requested_colour: str
    query: Item
    synthetic_image: bytes
    hits: list[Item]
    latency_ms: float
    share_requested_colour: float | None
    share_same_category: float | None


@dataclass
class MultimodalSearches:
    user_id: str = ""
    queries: list[MultimodalQuery] = field(default_factory=list)
    #: Why no multimodal query ran ("" when they did), e.g. no attribute usable for text changes.
    skipped: str = ""


@dataclass
class ImageSearchExample:
    query: Item
    hits: list[Item]
    latency_ms: float


@dataclass
class CategoryPrecision:
    """Precision of the queries of one category (share of hits in that category / colour)."""

    category: float
    colour: float | None  # None: the dataset has no colour
    queries: int


@dataclass
class SearchPrecision:
    """precision@k of SearchByImage over held-out queries."""

    queries: int
    k: int
    category: float
    colour: float | None  # None: the dataset has no colour
    fm_class: float | None  # by Fashion-MNIST class (the simulated world only)
    median_ms: float
    p90_ms: float
    chance_category: float
    chance_colour: float | None
    per_category: dict[str, CategoryPrecision] = field(default_factory=dict)


@dataclass
class ImageSearch:
    examples: list[ImageSearchExample] = field(default_factory=list)
    precision: SearchPrecision | None = None


# -- after the flows ----------------------------------------------------------------------------------


@dataclass
class Dependency:
    name: str
    ready: bool
    detail: str = ""


@dataclass
class ServiceDiagnostics:
    """A service's GetStatus and reflection while the demo ran, then its exit code."""

    target: str = ""
    services: list[str] = field(default_factory=list)
    reflection: list[str] = field(default_factory=list)
    serving: bool | None = None
    version: str = ""
    dependencies: list[Dependency] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    exit_code: int | None = None


@dataclass
class Timings:
    """Wall time of each demo stage (plus ``total``) and client-side latency of each call."""

    stages_s: dict[str, float] = field(default_factory=dict)
    calls_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class DemoResults:
    """Everything one demo run collected."""

    profile: str = ""
    data_dir: str = ""
    generated_at: str = ""
    data: DataSummary | None = None
    models: ModelsSummary | None = None
    indexing: Indexing | None = None
    recommend: Recommendations = field(default_factory=Recommendations)
    design: Designs = field(default_factory=Designs)
    alter: AlterationTrajectory | None = None
    seller: SellerVariants | None = None
    multimodal: MultimodalSearches = field(default_factory=MultimodalSearches)
    search: ImageSearch = field(default_factory=ImageSearch)
    services: dict[str, ServiceDiagnostics] = field(default_factory=dict)
    #: "<service> <RPC>" -> the model version named in its reply.
    served_models: dict[str, str] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    #: Section id -> why (part of) it has no results.
    errors: dict[str, str] = field(default_factory=dict)

    def add_error(self, section: str, message: str) -> None:
        """Record a failure of (part of) a section; several failures of one section are joined."""
        previous = self.errors.get(section)
        self.errors[section] = f"{previous}; {message}" if previous else message
