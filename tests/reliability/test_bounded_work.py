"""Bounded work per request (issue 13, item 1): field caps enforced in one place before any handler,
capped status messages and log values, plain tracebacks written off the event loop, decode errors as
INVALID_ARGUMENT, a server-side cap on every call's duration (streams included) and rate-limited
repeated log lines. Real gRPC servers on 127.0.0.1 over the fakes of tests/support/fakes.py."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.handlers
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from couturier.services.client import product_batches
from couturier.services.common import errors, limits, logs
from couturier.services.common.config import ServerSettings
from couturier.services.common.errors import InvalidInput, map_exception
from couturier.services.common.server import ServiceDefinition, ServiceHost
from couturier.services.common.validation import check_field_limits, field_limit
from couturier.v1 import (
    catalogue_pb2,
    common_pb2,
    latent_pb2,
    latent_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    scoring_pb2,
)
from support.fakes import FakeInferenceBackend
from support.hosts import assert_serving, injected_host

from .stack import product_image

PROTO_DIR = Path(common_pb2.__file__).parent
MESSAGE_MODULES = {
    Path(module.DESCRIPTOR.name).name: module
    for module in (common_pb2, catalogue_pb2, scoring_pb2, retrieval_pb2, latent_pb2)
}


def _field(full_name: str) -> tuple[str, FieldDescriptor]:
    """(proto file name, field descriptor) of a full field name such as couturier.v1.UserRef.user_id."""
    message, name = full_name.removeprefix("couturier.v1.").rsplit(".", 1)
    for file_name, module in MESSAGE_MODULES.items():
        if message in module.DESCRIPTOR.message_types_by_name:
            return file_name, module.DESCRIPTOR.message_types_by_name[message].fields_by_name[name]
    raise AssertionError(f"{full_name}: no such message in the contract")


async def _health_latencies(address: str, stop: asyncio.Event) -> list[float]:
    """Health.Check latencies, asked every 20 ms until ``stop`` is set."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
    return latencies


async def _refused(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


# -- 1. field caps, in one place ---------------------------------------------------------------------


def test_every_field_cap_names_a_string_bytes_or_repeated_field_of_the_contract() -> None:
    for full_name, cap in limits.FIELD_LIMITS.items():
        _, field = _field(full_name)
        assert field.is_repeated or field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES), full_name
        assert field_limit(field) == cap > 0


def test_every_cap_is_stated_in_the_proto_headers() -> None:
    """Each .proto file's header states the default caps; each field-level cap is listed in the header of
    the file that defines its message, with its number and unit."""
    headers = {path.name: path.read_text().split('syntax = "proto3";')[0] for path in sorted(PROTO_DIR.glob("*.proto"))}
    for name, header in headers.items():
        assert "Field caps" in header, name
    common = " ".join(headers["common.proto"].replace("//", " ").split())
    for fact in (
        f"a string field at most {limits.MAX_STRING_CHARS} characters",
        f"a bytes field at most {limits.MAX_BYTES} bytes",
        f"a repeated or map field at most {limits.MAX_REPEATED} entries",
        f"each string of a repeated string field at most {limits.MAX_LIST_STRING_CHARS} characters",
    ):
        assert fact in common
    for full_name, cap in limits.FIELD_LIMITS.items():
        file_name, field = _field(full_name)
        unit = "entries" if field.is_repeated else "bytes" if field.type == FieldDescriptor.TYPE_BYTES else "characters"
        message = field.containing_type.name
        assert f"//   {message}.{field.name} {cap} {unit}\n" in headers[file_name], f"{full_name} in {file_name}"


def test_requests_at_the_caps_pass_and_one_more_is_refused_naming_the_field() -> None:
    request = scoring_pb2.RecommendRequest(
        user=common_pb2.UserRef(user_id="u" * limits.MAX_ID_LENGTH, liked_product_ids=["p"] * limits.MAX_EXCLUDED_IDS),
        exclude_product_ids=["x" * limits.MAX_LIST_STRING_CHARS] * limits.MAX_EXCLUDED_IDS,
    )
    check_field_limits(request)
    request.user.user_id += "u"
    with pytest.raises(InvalidInput, match=r"^user\.user_id has 129 characters; at most 128$"):
        check_field_limits(request)
    request.user.user_id = "u1"
    request.exclude_product_ids.append("x")
    with pytest.raises(InvalidInput, match=r"^exclude_product_ids has 1001 entries; at most 1000$"):
        check_field_limits(request)
    product = common_pb2.Product(product_id="p", attributes={"brand": "b" * (limits.MAX_STRING_CHARS + 1)})
    with pytest.raises(InvalidInput, match=r"message 2: attributes\['brand'\] has 257 characters; at most 256"):
        check_field_limits(product, "message 2: ")
    image = common_pb2.ImagePayload(data=b"\0" * (limits.MAX_IMAGE_BYTES + 1))
    with pytest.raises(InvalidInput, match=f"data is {limits.MAX_IMAGE_BYTES + 1} bytes; the limit is"):
        check_field_limits(image)


async def test_a_one_megabyte_encoder_version_is_refused_at_once_while_health_answers(
    fake_hosts: dict[str, Any],
) -> None:
    """The tester's case: GetIndexStats with a 1 MB encoder_version stalled a service for 13 s."""
    address = fake_hosts["retrieval"].address
    stop = asyncio.Event()
    health = asyncio.create_task(_health_latencies(address, stop))
    await asyncio.sleep(0.05)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        request = catalogue_pb2.GetIndexStatsRequest(encoder_version="9" * (1 << 20))
        await stub.GetIndexStats(catalogue_pb2.GetIndexStatsRequest(), timeout=5)  # the channel is connected
        took = []
        for _ in range(3):
            started = time.perf_counter()
            details = await _refused(stub.GetIndexStats(request, timeout=5), grpc.StatusCode.INVALID_ARGUMENT)
            took.append(time.perf_counter() - started)
    await asyncio.sleep(0.05)
    stop.set()
    latencies = await health
    assert details == f"encoder_version has {1 << 20} characters; at most {limits.MAX_VERSION_CHARS}"
    assert min(took) < 0.1, took
    assert latencies and max(latencies) < 1.0, latencies
    assert fake_hosts["retrieval"].definition.key == "retrieval"
    await assert_serving(fake_hosts["retrieval"], timeout_s=1)


async def test_streamed_messages_are_checked_one_by_one(fake_hosts: dict[str, Any]) -> None:
    """A field only the guard checks (a product attribute) over its cap in the second message of a stream."""

    def batches() -> Iterator[catalogue_pb2.IndexProductsRequest]:
        yield from product_batches([(common_pb2.Product(product_id="ok1", category="shoes"), product_image(1))])
        bad = common_pb2.Product(product_id="ok2", category="shoes", attributes={"brand": "b" * 300})
        yield from product_batches([(bad, product_image(2))])

    async with grpc.aio.insecure_channel(fake_hosts["scoring"].address) as channel:
        index = channel.stream_unary(
            "/couturier.v1.ScoringService/IndexProducts",
            request_serializer=catalogue_pb2.IndexProductsRequest.SerializeToString,
            response_deserializer=catalogue_pb2.IndexProductsResponse.FromString,
        )
        details = await _refused(index(batches(), timeout=5), grpc.StatusCode.INVALID_ARGUMENT)
    assert details == "message 1: products[0].product.attributes['brand'] has 300 characters; at most 256"


# -- 2. errors and logs truncate caller input ---------------------------------------------------------


def test_status_messages_are_capped_with_a_marker() -> None:
    status, _ = map_exception(InvalidInput("unknown category " + "c" * 1_000_000))
    assert len(status.message) <= limits.MAX_STATUS_MESSAGE_CHARS + 40
    assert status.message.endswith(f"[{1_000_017 - limits.MAX_STATUS_MESSAGE_CHARS} more characters cut]")
    wide, _ = map_exception(InvalidInput("\U0001f457" * 5000))  # 4 bytes each in UTF-8
    assert len(wide.message.encode()) <= limits.MAX_STATUS_MESSAGE_BYTES + 20
    assert errors.brief("x" * 10_000) == repr("x" * limits.MAX_QUOTED_CHARS) + "... (10000 characters)"
    assert len(errors.brief(list(range(100_000)))) <= limits.MAX_QUOTED_CHARS + 40


def _raising_service(error: Exception) -> ServiceDefinition:
    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise error

    handlers = {"Fail": grpc.unary_unary_rpc_method_handler(fail)}
    return ServiceDefinition(
        key="raising",
        service_names=["test.Raising"],
        register=lambda server: server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Raising", handlers),)
        ),
    )


async def test_a_megabyte_error_message_reaches_the_caller_capped() -> None:
    """Echoing a 1 MB value used to exceed gRPC's metadata limit: the caller saw RESOURCE_EXHAUSTED."""
    host = ServiceHost(_raising_service(InvalidInput("unknown category '" + "é" * 1_000_000 + "'")), ServerSettings())
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            details = await _refused(channel.unary_unary("/test.Raising/Fail")(b""), grpc.StatusCode.INVALID_ARGUMENT)
    finally:
        await host.stop(grace_s=0)
    assert details.startswith("unknown category 'éé") and details.endswith("cut]")
    assert len(details) <= limits.MAX_STATUS_MESSAGE_CHARS + 40


async def test_a_megabyte_category_gets_a_short_invalid_argument(fake_backend: FakeInferenceBackend) -> None:
    host = injected_host("latent", backend=fake_backend)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = latent_pb2_grpc.LatentOptimizationServiceStub(channel)
            audience = latent_pb2.ResolvedAudience(model=common_pb2.ModelVersion(name="item_encoder", version="1"))
            audience.users.add(user_id="u1", vector=[0.1] * fake_backend.dims.item_dim)
            request = latent_pb2.DesignRequest(resolved_audience=audience, category="c" * (1 << 20))
            details = await _refused(stub.Design(request, timeout=5), grpc.StatusCode.INVALID_ARGUMENT)
    finally:
        await host.stop(grace_s=0)
    assert details == f"category has {1 << 20} characters; at most {limits.MAX_ID_LENGTH}"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Logging configured to write into a buffer (background thread); shut down after the test."""
    buffer = io.StringIO()
    logs.configure_logging("INFO", "console", repeat_limit=5, repeat_interval_s=60, stream=buffer)
    try:
        yield buffer
    finally:
        logs.shutdown_logging()


def test_log_values_are_cut(log_output: io.StringIO) -> None:
    logs.get_logger("test.cut").info("request failed", reason="r" * 1_000_000, ids=list(range(100_000)))
    logs.shutdown_logging()
    (line,) = log_output.getvalue().splitlines()
    assert len(line) < 3 * limits.MAX_LOG_VALUE_CHARS
    assert "more characters cut" in line


# -- 3. tracebacks: plain, without locals, never rendered on the event loop ----------------------------


class _ThreadRecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        return super().write(text)


@pytest.mark.parametrize("fmt", ["console", "json"])
async def test_tracebacks_are_plain_without_locals_and_written_off_the_loop(fmt: str) -> None:
    stream = _ThreadRecordingStream()
    logs.configure_logging("INFO", fmt, stream=stream)
    try:

        def failing() -> None:
            secret_local = "SECRET-LOCAL-" + "z" * 1_000_000  # noqa: F841 (what a traceback with locals would show)
            raise KeyError("boom")

        try:
            failing()
        except KeyError as exc:
            logs.get_logger("test.traceback").error("unexpected error", error_id="abc", exc_info=exc)
        try:
            failing()
        except KeyError:
            logs.get_logger("test.traceback").exception("handled here")  # exc_info=True: this thread's exception
    finally:
        logs.shutdown_logging()
    text = stream.getvalue()
    assert text.count("Traceback (most recent call last)") == 2 and text.count("KeyError: 'boom'") == 2
    assert "SECRET-LOCAL" not in text and "secret_local =" not in text
    assert stream.writers and threading.current_thread().name not in stream.writers
    if fmt == "json":
        assert json.loads(text.splitlines()[0])["error_id"] == "abc"


def test_the_queue_handler_leaves_formatting_to_the_writer_thread(log_output: io.StringIO) -> None:
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.handlers.QueueHandler)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, {"event": "e"}, (), None)
    assert handler.prepare(record) is record and record.msg == {"event": "e"}


# -- 5. protobuf decode errors are INVALID_ARGUMENT -------------------------------------------------------

INVALID_UTF8_STRING = b"\x0a\x03\xff\xfe\xfd"  # field 1 (a string in the request types below), not UTF-8


async def test_invalid_utf8_in_a_unary_request_is_invalid_argument_naming_the_method(
    fake_hosts: dict[str, Any],
) -> None:
    async with grpc.aio.insecure_channel(fake_hosts["retrieval"].address) as channel:
        call = channel.unary_unary("/couturier.v1.VisualRetrievalService/GetIndexStats")(INVALID_UTF8_STRING)
        details = await _refused(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert "/couturier.v1.VisualRetrievalService/GetIndexStats" in details
    assert "couturier.v1.GetIndexStatsRequest" in details and "UTF-8" in details


async def test_invalid_utf8_in_a_streamed_message_is_invalid_argument(fake_hosts: dict[str, Any]) -> None:
    good = next(product_batches([(common_pb2.Product(product_id="u8", category="shoes"), product_image(3))]))
    bad = good.SerializeToString() + b"\x12\x02\xc3\x28"  # encoder_version (field 2): invalid UTF-8
    async with grpc.aio.insecure_channel(fake_hosts["scoring"].address) as channel:
        call = channel.stream_unary("/couturier.v1.ScoringService/IndexProducts")(iter([good.SerializeToString(), bad]))
        details = await _refused(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("message 1: the request to /couturier.v1.ScoringService/IndexProducts is not a valid")


async def test_invalid_bytes_to_a_server_stream_are_invalid_argument(fake_backend: FakeInferenceBackend) -> None:
    host = injected_host("latent", backend=fake_backend)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            call = channel.unary_stream("/couturier.v1.LatentOptimizationService/Alter")(b"\x1a\x02\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
    finally:
        await host.stop(grace_s=0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "couturier.v1.AlterRequest" in (info.value.details() or "")


# -- 6. a server-side cap on every call, streams included ---------------------------------------------------


def _slow_streams() -> ServiceDefinition:
    async def drip(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        while True:  # a server stream that never ends by itself
            yield b"tick"
            await asyncio.sleep(0.02)

    async def sink(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        count = 0
        async for _ in requests:  # a client stream that never ends
            count += 1
        return str(count).encode()

    async def busy_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(30)  # stuck between two messages
        yield b"never"

    handlers = {
        "Drip": grpc.unary_stream_rpc_method_handler(drip),
        "Sink": grpc.stream_unary_rpc_method_handler(sink),
        "Stuck": grpc.unary_stream_rpc_method_handler(busy_stream),
    }
    return ServiceDefinition(
        key="streams",
        service_names=["test.Streams"],
        register=lambda server: server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Streams", handlers),)
        ),
    )


@pytest.fixture
async def stream_host() -> AsyncIterator[ServiceHost]:
    host = ServiceHost(_slow_streams(), ServerSettings(port=0, stream_timeout_s=0.3, rpc_timeout_s=5))
    await host.start()
    yield host
    await host.stop(grace_s=0)


@pytest.mark.parametrize("method", ["Drip", "Stuck"])
async def test_a_server_stream_over_the_cap_gets_deadline_exceeded(stream_host: ServiceHost, method: str) -> None:
    received = 0
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(stream_host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in channel.unary_stream(f"/test.Streams/{method}")(b"", timeout=20):
                received += 1
    took = time.perf_counter() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "stream_timeout_s" in (info.value.details() or "")
    assert received >= 1 and 0.25 < took < 3, (received, took)


async def test_a_client_stream_over_the_cap_gets_deadline_exceeded(stream_host: ServiceHost) -> None:
    async def forever() -> AsyncIterator[bytes]:
        while True:
            yield b"x"
            await asyncio.sleep(0.02)

    started = time.perf_counter()
    async with grpc.aio.insecure_channel(stream_host.address) as channel:
        call = channel.stream_unary("/test.Streams/Sink")(forever(), timeout=20)
        await _refused(call, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.perf_counter() - started < 3


async def test_a_health_watch_is_not_capped(stream_host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(stream_host.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await asyncio.sleep(0.6)  # twice the stream cap
        assert not watch.done()
        watch.cancel()


# -- 7. repeated log lines are rate-limited ---------------------------------------------------------------


def test_a_thousand_identical_lines_give_at_most_the_limit_and_one_summary(log_output: io.StringIO) -> None:
    log = logs.get_logger("test.repeat")
    for index in range(1000):  # an outage: every request fails the same way, with details that vary
        log.info("request failed", method="/s/M", code="UNAVAILABLE", reason=f"connection refused #{index}")
    log.info("request failed", method="/s/Other", code="UNAVAILABLE", reason="another method is another line")
    logs.shutdown_logging()
    lines = log_output.getvalue().splitlines()
    summaries = [line for line in lines if logs.SUPPRESSED_EVENT in line]
    failed = [line for line in lines if "request failed" in line and "method=/s/M" in line and line not in summaries]
    assert len(failed) == 5
    assert len(summaries) == 1 and "suppressed=995" in summaries[0] and "method=/s/M" in summaries[0]
    assert sum("method=/s/Other" in line for line in lines) == 1


def test_lines_pass_again_after_the_interval_and_the_summary_comes_first() -> None:
    now = [0.0]
    repeats = logs.RepeatFilter(limit=2, interval_s=10, clock=lambda: now[0])

    def record(method: str = "/s/M") -> logging.LogRecord:
        return logging.LogRecord(
            "t", logging.INFO, __file__, 1, {"event": "request failed", "method": method}, (), None
        )

    assert [repeats.filter(record()) for _ in range(5)] == [True, True, False, False, False]
    assert repeats.take_summaries() == []
    now[0] = 10.5
    assert repeats.filter(record()) is True
    (summary,) = repeats.take_summaries()
    assert summary.msg["suppressed"] == 3 and summary.msg["repeated_event"] == "request failed"
    assert repeats.filter(record("/s/N")) is True
    with pytest.raises(ValueError):
        logs.RepeatFilter(limit=0)


async def test_an_outage_logs_a_bounded_number_of_lines(log_output: io.StringIO, tmp_path: Path) -> None:
    """The tester saw ~5,000 INFO lines in 15 s while Triton was down."""
    backend = FakeInferenceBackend()
    host = injected_host("latent", backend=backend, log_repeat_limit=5)
    await host.start()
    try:
        backend.unavailable = True
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = latent_pb2_grpc.LatentOptimizationServiceStub(channel)
            audience = latent_pb2.ResolvedAudience(model=common_pb2.ModelVersion(name="item_encoder", version="1"))
            audience.users.add(user_id="u1", vector=[0.1] * backend.dims.item_dim)
            request = latent_pb2.DesignRequest(resolved_audience=audience, category="tops", n=1)
            for _ in range(200):
                await _refused(stub.Design(request, timeout=5), grpc.StatusCode.UNAVAILABLE)
    finally:
        await host.stop(grace_s=0)
    logs.shutdown_logging()
    lines = log_output.getvalue().splitlines()
    failed = [line for line in lines if "request failed" in line and logs.SUPPRESSED_EVENT not in line]
    assert len(failed) == 5, len(failed)
    assert any("suppressed=195" in line for line in lines if logs.SUPPRESSED_EVENT in line)
    assert len(lines) < 60


async def test_a_service_host_never_logs_with_structlogs_defaults(fake_backend: FakeInferenceBackend) -> None:
    """A host started without configure_logging sets up the bounded, background logging itself."""
    logs.shutdown_logging()
    host = injected_host("latent", backend=fake_backend)
    await host.start()
    try:
        assert logs.is_configured()
        assert isinstance(logging.getLogger().handlers[0], logging.handlers.QueueHandler)
    finally:
        await host.stop(grace_s=0)
        logs.shutdown_logging()
