"""The public contract: every generated module imports and covers the mission's operations."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

PROTO_DIR = Path(__file__).resolve().parents[1] / "protos" / "couturier" / "v1"
PROTO_NAMES = sorted(path.stem for path in PROTO_DIR.glob("*.proto"))


def test_proto_files_present() -> None:
    assert PROTO_NAMES == ["common", "diagnostics", "latent", "orchestrator", "retrieval", "scoring"]


@pytest.mark.parametrize("name", PROTO_NAMES)
def test_generated_modules_import(name: str) -> None:
    messages = importlib.import_module(f"couturier.v1.{name}_pb2")
    stubs = importlib.import_module(f"couturier.v1.{name}_pb2_grpc")
    assert messages.DESCRIPTOR.package == "couturier.v1"
    for service in messages.DESCRIPTOR.services_by_name:
        assert hasattr(stubs, f"{service}Stub")
        assert hasattr(stubs, f"add_{service}Servicer_to_server")


def _methods(module: str, service: str) -> dict[str, tuple[bool, bool]]:
    descriptor = importlib.import_module(f"couturier.v1.{module}_pb2").DESCRIPTOR.services_by_name[service]
    return {m.name: (m.client_streaming, m.server_streaming) for m in descriptor.methods}


def test_every_operation_of_the_mission_is_in_the_contract() -> None:
    assert _methods("scoring", "ScoringService") == {"ScoreItems": (False, False), "Recommend": (False, False)}
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
        "GetIndexStats": (False, False),
    }
    assert set(_methods("orchestrator", "OrchestratorService")) == {"DesignAndShop", "SellerFeedback", "MultimodalShop"}


def test_search_by_image_and_text_returns_the_synthetic_query() -> None:
    from couturier.v1 import retrieval_pb2

    fields = retrieval_pb2.SearchByImageAndTextResponse.DESCRIPTOR.fields_by_name
    assert fields["synthetic_query"].message_type.full_name == "couturier.v1.ImagePayload"
    assert "query_generator" in fields and "encoder" in fields


def test_results_carry_the_model_version() -> None:
    from couturier.v1 import latent_pb2, retrieval_pb2, scoring_pb2

    for message in (
        scoring_pb2.RecommendResponse,
        scoring_pb2.ScoreItemsResponse,
        latent_pb2.DesignResponse,
        latent_pb2.SellerShiftsResponse,
        retrieval_pb2.SearchResponse,
        retrieval_pb2.IndexProductsResponse,
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
