"""Property-based fuzzing of every RPC of every couturier service (issue 13), over real gRPC servers on
127.0.0.1 built with the test fakes.

The RPCs are listed from the services' descriptors, so a new RPC is fuzzed without a change here (a
new service needs its host in SERVING_HOSTS; a test says so). Each RPC gets ``max_examples`` requests
as raw wire bytes (strategies.request_bytes: a valid seed request of seeds.SEEDS with a field or two
changed, random field values, lengths over the caps, invalid UTF-8, random images, cut and random
bytes), sent unchanged through a generic channel. Failing:

* any INTERNAL or UNKNOWN answer, or a retryable UNAVAILABLE / DEADLINE_EXCEEDED (nothing is down
  here: caller input must never look like an outage or stall a call);
* a health check, asked every 50 ms from another thread, answering after more than 1 s (or not);
* a service not SERVING at the end.

Hypothesis runs derandomized with a fixed number of examples (COUTURIER_FUZZ_EXAMPLES, default 40),
so the suite is repeatable and CI-sized.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from couturier.services.common.server import INFRASTRUCTURE_SERVICES
from couturier.v1 import (
    catalogue_pb2,
    common_pb2,
    diagnostics_pb2,
    latent_pb2,
    orchestrator_pb2,
    retrieval_pb2,
    scoring_pb2,
)

from .seeds import SEEDS
from .stack import FuzzStack, start_stack, stop_stack
from .strategies import request_bytes

#: Every module generated from protos/couturier/v1 (a test checks that none is missing).
PROTO_MODULES = (common_pb2, catalogue_pb2, scoring_pb2, retrieval_pb2, latent_pb2, orchestrator_pb2, diagnostics_pb2)
ALL_HOSTS = ("scoring", "retrieval", "latent", "orchestrator")
#: Which hosts of the stack serve each service of the API.
SERVING_HOSTS = {
    "couturier.v1.ScoringService": ("scoring",),
    "couturier.v1.VisualRetrievalService": ("retrieval",),
    "couturier.v1.LatentOptimizationService": ("latent",),
    "couturier.v1.OrchestratorService": ("orchestrator",),
    "couturier.v1.DiagnosticsService": ALL_HOSTS,
}
#: Answers that fail the test: a bug (INTERNAL, UNKNOWN), or caller input that looks like an outage or stalls.
FAILING_CODES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
CALL_TIMEOUT_S = 30.0
EXAMPLES = int(os.environ.get("COUTURIER_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)


def api_methods() -> Iterator[tuple[str, MethodDescriptor]]:
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield service.full_name, method


CASES = [
    pytest.param(service, method, host, id=f"{service.rsplit('.', 1)[-1]}.{method.name}@{host}")
    for service, method in api_methods()
    for host in SERVING_HOSTS.get(service, ("unmapped",))
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    started = start_stack(tmp_path_factory.mktemp("fuzz"))
    try:
        yield started
    finally:
        stop_stack(started)


def test_every_proto_module_and_service_is_fuzzed() -> None:
    proto_dir = Path(common_pb2.__file__).parent
    assert {p.name for p in proto_dir.glob("*.proto")} == {Path(m.DESCRIPTOR.name).name for m in PROTO_MODULES}, (
        "a .proto file is missing from PROTO_MODULES"
    )
    services = {service for service, _ in api_methods()}
    assert services == set(SERVING_HOSTS), "map every service of the API to the hosts that serve it"
    assert "couturier.v1.DiagnosticsService" in INFRASTRUCTURE_SERVICES


def test_each_host_serves_what_the_map_says(stack: FuzzStack) -> None:
    for key, host in stack.hosts.items():
        own = {service for service, hosts in SERVING_HOSTS.items() if key in hosts}
        assert own == {*host.definition.service_names, "couturier.v1.DiagnosticsService"}, key


@pytest.mark.parametrize(("service", "method", "host"), CASES)
def test_rpc_answers_any_request_without_internal_errors(
    stack: FuzzStack, service: str, method: MethodDescriptor, host: str
) -> None:
    path = f"/{service}/{method.name}"
    problems_before = len(stack.watchdog.problems)
    channel = grpc.insecure_channel(
        stack.hosts[host].address,
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
    )
    answered: dict[str, int] = {}
    requests_of = request_bytes(method.input_type, SEEDS.get(path))

    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        requests: list[bytes]
        try:
            if method.client_streaming:
                requests = data.draw(st.lists(requests_of, max_size=3), label="requests")
                channel.stream_unary(path)(iter(requests), timeout=CALL_TIMEOUT_S)
            else:
                requests = [data.draw(requests_of, label="request")]
                if method.server_streaming:
                    for _ in channel.unary_stream(path)(requests[0], timeout=CALL_TIMEOUT_S):
                        pass
                else:
                    channel.unary_unary(path)(requests[0], timeout=CALL_TIMEOUT_S)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            shown = [r[:120] for r in requests]
            assert code not in FAILING_CODES, f"{path} answered {code.name}: {details!r} to {shown!r}"
            assert len(details) <= 1100, f"{path}: a {len(details)}-character status message"
        answered[code.name] = answered.get(code.name, 0) + 1

    try:
        fuzz()
    finally:
        channel.close()
    assert sum(answered.values()) >= min(EXAMPLES, 5), answered
    assert stack.watchdog.problems[problems_before:] == [], f"health stalled while fuzzing {path}"


def test_every_service_is_serving_after_the_fuzzing(stack: FuzzStack) -> None:
    """Runs last in this module: nothing the fuzzing sent left a service down or stalled health."""
    assert stack.serving() == dict.fromkeys(ALL_HOSTS, "SERVING")
    assert stack.watchdog.checks > 0
    assert stack.watchdog.problems == []
    assert stack.watchdog.slowest_s < 1.0
