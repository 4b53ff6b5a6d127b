"""Transport security and caller authentication, on by configuration (see docs/security.md).

* :func:`server_credentials`: TLS for a service's port from ``tls_cert_file`` / ``tls_key_file``; with
  ``tls_client_ca_file`` the server also demands a client certificate signed by that CA (mTLS).
* :func:`channel_credentials`: TLS for a channel this process opens (root CA, optional client certificate).
* :func:`load_tokens` and :class:`TokenAuthInterceptor`: bearer tokens (``authorization: Bearer <token>``)
  read from a file of ``caller-name:token`` lines at start; every call except health and reflection must
  carry one. The caller's name is bound into the call's log context (``caller``) and counted in
  ``couturier_rpc_caller_requests_total``.
* :class:`BearerTokenInterceptor`: the client side, adding a token to every call of a channel.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from prometheus_client import Counter

from couturier.services.common.errors import InvalidInput, Unauthenticated
from couturier.services.common.logs import get_logger

log = get_logger(__name__)

#: Metadata key of the bearer token (lower case: gRPC metadata keys are).
AUTHORIZATION = "authorization"
#: Method prefixes that stay open with tokens configured: probes and discovery carry no data.
OPEN_METHOD_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
#: Shortest token accepted in a tokens file (a guessable token is no authentication).
MIN_TOKEN_CHARS = 16
_CALLER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

CALLER_REQUESTS = Counter(
    "couturier_rpc_caller_requests_total",
    "Authenticated calls by service, method and caller (caller names come from the tokens file).",
    ["service", "method", "caller"],
)
UNAUTHENTICATED_REQUESTS = Counter(
    "couturier_rpc_unauthenticated_total",
    "Calls refused for a missing or unknown bearer token, by service and method.",
    ["service", "method", "reason"],
)


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file named by a setting; InvalidInput saying which setting when unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise InvalidInput(f"{what} {path!r} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class TlsFiles:
    """Certificate files of one side of a connection ("" = not set)."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidInput("a TLS certificate and its private key go together: set both files or neither")


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials | None:
    """TLS credentials for a server port (None: no certificate configured, plaintext).

    ``files.ca_file`` set: clients must present a certificate signed by it (mTLS)."""
    if not files.cert_file:
        if files.ca_file:
            raise InvalidInput(
                "tls_client_ca_file needs tls_cert_file and tls_key_file (mTLS is TLS plus client checks)"
            )
        return None
    pair = (read_pem(files.key_file, "tls_key_file"), read_pem(files.cert_file, "tls_cert_file"))
    if files.ca_file:
        return grpc.ssl_server_credentials(
            [pair], root_certificates=read_pem(files.ca_file, "tls_client_ca_file"), require_client_auth=True
        )
    return grpc.ssl_server_credentials([pair])


def transport_name(files: TlsFiles) -> str:
    """How a server port is protected: ``mtls``, ``tls`` or ``plaintext``."""
    if not files.cert_file:
        return "plaintext"
    return "mtls" if files.ca_file else "tls"


def channel_credentials(files: TlsFiles, what: str = "channel") -> grpc.ChannelCredentials | None:
    """TLS credentials for a channel (None: nothing set, plaintext). ``files.ca_file``: the CA that signed the
    server's certificate ("" = the system's roots); ``cert_file``/``key_file``: this side's certificate for mTLS."""
    if not (files.ca_file or files.cert_file):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(files.ca_file, f"{what} CA file") if files.ca_file else None,
        private_key=read_pem(files.key_file, f"{what} key file") if files.key_file else None,
        certificate_chain=read_pem(files.cert_file, f"{what} certificate file") if files.cert_file else None,
    )


def load_tokens(path: str) -> dict[str, str]:
    """``caller-name:token`` lines of ``path`` -> {caller: token}. Blank lines and ``#`` comments are skipped.

    Refuses (InvalidInput naming the line) a malformed line, a bad caller name, a token shorter than
    :data:`MIN_TOKEN_CHARS`, and a repeated caller or token."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read auth_tokens_file {path!r}: {exc}") from None
    tokens: dict[str, str] = {}
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        where = f"auth_tokens_file {path!r} line {number}"
        if not sep or not _CALLER_NAME.match(name):
            raise InvalidInput(f"{where}: expected 'caller-name:token' with a name of letters, digits, '_.-'")
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
            raise InvalidInput(
                f"{where}: the token of {name!r} must be at least {MIN_TOKEN_CHARS} characters, no spaces"
            )
        if name in tokens or token in seen:
            raise InvalidInput(f"{where}: caller {name!r} or its token appears twice")
        tokens[name] = token
        seen.add(token)
    if not tokens:
        raise InvalidInput(f"auth_tokens_file {path!r} holds no 'caller-name:token' line")
    return tokens


def _split(method_name: str) -> tuple[str, str]:
    service, _, method = method_name.rpartition("/")
    return service.lstrip("/"), method


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call without a known bearer token with UNAUTHENTICATED (health and reflection stay open).

    Tokens are compared with :func:`hmac.compare_digest` against every known token (no early exit). The
    check runs inside the call's handler, so the refusal is counted and mapped like any error; the caller's
    name is bound into the call's log context (structlog contextvars ``caller``)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ValueError("TokenAuthInterceptor needs at least one caller token")
        self._tokens = [(name, token.encode("utf-8")) for name, token in tokens.items()]

    @property
    def callers(self) -> list[str]:
        return [name for name, _ in self._tokens]

    def authenticate(self, metadata: Any, method_name: str) -> str:
        """The caller's name for the call's metadata; Unauthenticated (with what to send) otherwise."""
        service, rpc = _split(method_name)
        values = [value for key, value in (metadata or ()) if key == AUTHORIZATION]
        if not values:
            UNAUTHENTICATED_REQUESTS.labels(service, rpc, "missing").inc()
            raise Unauthenticated(
                f"{method_name} needs a bearer token: send metadata 'authorization: Bearer <token>' "
                "(tokens are issued by the service's operator)"
            )
        scheme, _, presented = str(values[0]).partition(" ")
        given = presented.strip().encode("utf-8")
        caller = ""
        for name, token in self._tokens:  # every token compared: the time does not say which one matched
            if hmac.compare_digest(given, token) and scheme.lower() == "bearer":
                caller = name
        if not caller:
            UNAUTHENTICATED_REQUESTS.labels(service, rpc, "invalid").inc()
            raise Unauthenticated(
                f"{method_name}: the bearer token is not valid (expected 'authorization: Bearer <token>' "
                "with a token the service knows)"
            )
        CALLER_REQUESTS.labels(service, rpc, caller).inc()
        return caller

    def _check(self, context: grpc.aio.ServicerContext, method_name: str) -> None:
        caller = self.authenticate(context.invocation_metadata(), method_name)
        structlog.contextvars.bind_contextvars(caller=caller)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method_name: str = handler_call_details.method
        if handler is None or method_name.startswith(OPEN_METHOD_PREFIXES):
            return handler
        check = self._check
        options: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary

            async def unary_unary_checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                check(context, method_name)
                return await unary_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary_checked, **options)
        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream

            async def unary_stream_checked(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                check(context, method_name)
                async for item in _relay(unary_stream(request, context)):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream_checked, **options)
        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary

            async def stream_unary_checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                check(context, method_name)
                return await stream_unary(requests, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary_checked, **options)
        stream_stream = handler.stream_stream

        async def stream_stream_checked(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            check(context, method_name)
            async for item in _relay(stream_stream(requests, context)):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream_checked, **options)


async def _relay(result: Any) -> AsyncIterator[Any]:
    """The items of a streaming handler's result (an async iterator, or a coroutine using context.write)."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result


# grpc.aio's client interceptor classes are untyped (Any) for mypy
class BearerTokenInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Client side: adds ``authorization: Bearer <token>`` to every call of the channel."""

    def __init__(self, token: str) -> None:
        if not token or any(c.isspace() for c in token):
            raise InvalidInput("a bearer token must be non-empty and hold no spaces")
        self._header = (AUTHORIZATION, f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()))
        metadata.add(*self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def read_token_file(path: str, what: str) -> str:
    """The token held by a file: its first non-blank, non-comment line, either the bare token or a
    ``caller-name:token`` line of a tokens file (then the part after the first ``:``)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {what} {path!r}: {exc}") from None
    for raw in lines:
        line = raw.strip()
        if line and not line.startswith("#"):
            name, sep, token = line.partition(":")
            return token.strip() if sep else name
    raise InvalidInput(f"{what} {path!r} holds no token")
