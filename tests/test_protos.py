"""The public contract: every generated module imports and covers the mission's operations."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

PROTO_DIR = Path(__file__).resolve().parents[1] / "protos" / "couturier" / "v1"
PROTO_NAMES = sorted(path.stem for path in PROTO_DIR.glob("*.proto"))


def test_proto_files_present() -> None:
    assert PROTO_NAMES == ["catalogue", "common", "diagnostics", "latent", "orchestrator", "retrieval", "scoring"]


@pytest.mark.parametrize("name", PROTO_NAMES)
def test_generated_modules_import(name: str) -> None:
    messages = importlib.import_module(f"couturier.v1.{name}_pb2")
    stubs = importlib.import_module(f"couturier.v1.{name}_pb2_grpc")
    assert messages.DESCRIPTOR.package == "couturier.v1"
    for service in messages.DESCRIPTOR.services_by_name:
        assert hasattr(stubs, f"{service}Stub")
        assert hasattr(stubs, f"add_{service}Servicer_to_server")


def _service(module: str, service: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"couturier.v1.{module}_pb2").DESCRIPTOR.services_by_name[service]


def _methods(module: str, service: str) -> dict[str, tuple[bool, bool]]:
    return {m.name: (m.client_streaming, m.server_streaming) for m in _service(module, service).methods}


def test_every_operation_of_the_mission_is_in_the_contract() -> None:
    assert _methods("scoring", "ScoringService") == {
        "ScoreItems": (False, False),
        "Recommend": (False, False),
        "DescribeUsers": (False, False),  # user vectors: the orchestrator resolves audiences for latent
        "IndexProducts": (True, False),  # streamed batches
        "DeleteProducts": (False, False),
        "GetIndexStats": (False, False),
        "ListProductIds": (False, False),  # paged ids: the IndexCatalogue report and `couturier index --reconcile`
    }
    assert _methods("latent", "LatentOptimizationService") == {
        "Design": (False, False),
        "Alter": (False, True),  # the trajectory is streamed
        "SellerShifts": (False, False),
    }
    assert _methods("retrieval", "VisualRetrievalService") == {
        "IndexProducts": (True, False),  # streamed batches
        "DeleteProducts": (False, False),
        "SearchByImage": (False, False),
        "SearchByImageAndText": (False, False),
        "GetProducts": (False, False),  # stored product images: the orchestrator resolves product ids for latent
        "GetIndexStats": (False, False),
        "ListProductIds": (False, False),
    }
    assert _methods("orchestrator", "OrchestratorService") == {
        "Design": (False, False),  # every latent capability by ids (the orchestrator resolves them)
        "Alter": (False, True),
        "SellerShifts": (False, False),
        "DesignAndShop": (False, False),
        "SellerFeedback": (False, False),
        "MultimodalShop": (False, False),
        "IndexCatalogue": (True, False),  # one stream feeds both vector spaces
    }


def test_catalogue_messages_are_shared_by_every_indexing_service() -> None:
    """Scoring, retrieval and the orchestrator index from the same catalogue.proto messages."""
    expected = {
        "IndexProducts": ("couturier.v1.IndexProductsRequest", "couturier.v1.IndexProductsResponse"),
        "DeleteProducts": ("couturier.v1.DeleteProductsRequest", "couturier.v1.DeleteProductsResponse"),
        "GetIndexStats": ("couturier.v1.GetIndexStatsRequest", "couturier.v1.IndexStats"),
        "ListProductIds": ("couturier.v1.ListProductIdsRequest", "couturier.v1.ListProductIdsResponse"),
    }
    for module, service in (("scoring", "ScoringService"), ("retrieval", "VisualRetrievalService")):
        methods = _service(module, service).methods_by_name
        for name, (request, response) in expected.items():
            assert (methods[name].input_type.full_name, methods[name].output_type.full_name) == (request, response), (
                f"{service}.{name}"
            )
    index = _service("orchestrator", "OrchestratorService").methods_by_name["IndexCatalogue"]
    assert index.input_type.full_name == "couturier.v1.IndexProductsRequest"
    response = index.output_type.fields_by_name
    assert {response[n].message_type.full_name for n in ("scoring", "retrieval")} == {
        "couturier.v1.IndexProductsResponse"
    }
    from couturier.v1 import catalogue_pb2, retrieval_pb2

    assert catalogue_pb2.DESCRIPTOR.services_by_name == {}  # messages only
    assert "IndexStats" not in retrieval_pb2.DESCRIPTOR.message_types_by_name  # moved to catalogue.proto


def test_search_by_image_and_text_returns_the_synthetic_query() -> None:
    from couturier.v1 import retrieval_pb2

    fields = retrieval_pb2.SearchByImageAndTextResponse.DESCRIPTOR.fields_by_name
    assert fields["synthetic_query"].message_type.full_name == "couturier.v1.ImagePayload"
    assert "query_generator" in fields and "encoder" in fields


def test_results_carry_the_model_version() -> None:
    from couturier.v1 import catalogue_pb2, latent_pb2, retrieval_pb2, scoring_pb2

    for message in (
        scoring_pb2.RecommendResponse,
        scoring_pb2.ScoreItemsResponse,
        scoring_pb2.DescribeUsersResponse,
        latent_pb2.DesignResponse,
        latent_pb2.SellerShiftsResponse,
        retrieval_pb2.SearchResponse,
        retrieval_pb2.SearchByImageAndTextResponse,
        catalogue_pb2.IndexProductsResponse,
        catalogue_pb2.IndexStats,
    ):
        types = {f.message_type.full_name for f in message.DESCRIPTOR.fields if f.message_type is not None}
        assert "couturier.v1.ModelVersion" in types, message.DESCRIPTOR.full_name


def test_every_proto_field_is_documented_or_self_describing() -> None:
    """Each field declaration has a comment above it unless its name is its type (e.g. `Product product`)."""
    undocumented = []
    for path in PROTO_DIR.glob("*.proto"):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            words = stripped.split()
            is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("option", "//"))
            if not is_field or stripped.split("=")[0].strip().isupper():  # enum values are named for meaning
                continue
            previous = lines[number - 1].strip()
            type_name = words[-4] if words[0] in ("repeated", "optional") else words[0]
            self_describing = type_name.split(".")[-1].lower().replace("_", "") == words[-3].replace("_", "")
            if not previous.startswith("//") and not self_describing:
                undocumented.append(f"{path.name}:{number + 1}: {stripped}")
    assert undocumented == [], "\n".join(undocumented)


def test_latent_requests_take_a_resolved_audience_next_to_the_ids() -> None:
    """ResolvedAudience is a new field of each latent request; the existing fields keep their numbers."""
    from couturier.v1 import latent_pb2

    for message, number, kept in (
        (latent_pb2.DesignRequest, 8, {"audience": 1, "category": 2, "n": 3, "seed": 7}),
        (latent_pb2.AlterRequest, 7, {"audience": 1, "item": 2, "category": 3, "report_every": 6}),
        (latent_pb2.SellerShiftsRequest, 9, {"item": 1, "category": 2, "audience": 3, "inversion": 8}),
    ):
        fields = message.DESCRIPTOR.fields_by_name
        assert fields["resolved_audience"].number == number
        assert fields["resolved_audience"].message_type.full_name == "couturier.v1.ResolvedAudience"
        assert {name: fields[name].number for name in kept} == kept
    resolved = latent_pb2.ResolvedAudience.DESCRIPTOR.fields_by_name
    assert resolved["model"].message_type.full_name == "couturier.v1.ModelVersion"
    user_fields = set(latent_pb2.ResolvedUser.DESCRIPTOR.fields_by_name)
    assert user_fields == {"user_id", "vector", "best_score", "kth_best_score"}
    orchestrator = _service("orchestrator", "OrchestratorService").methods_by_name
    for name in ("Design", "Alter", "SellerShifts"):
        latent = _service("latent", "LatentOptimizationService").methods_by_name[name]
        assert orchestrator[name].input_type == latent.input_type, name
        assert orchestrator[name].output_type == latent.output_type, name
