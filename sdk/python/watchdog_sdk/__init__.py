"""watchdog_sdk: write a function for ng-watchdog's http mode as one handler.

    import watchdog_sdk

    def handle(request):
        return watchdog_sdk.Response(200, {"content-type": "text/plain"}, b"hello " + request.body)

    watchdog_sdk.serve(handle)

See sdk/python/README.md for the whole API.
"""

from ._server import serve
from ._types import (
    CloudEvent,
    Event,
    GrpcFramingError,
    GrpcStatus,
    Headers,
    PermanentError,
    Request,
    Response,
    RetryableError,
    StatusCode,
    grpc_frame,
)
from ._version import __version__

__all__ = [
    "CloudEvent",
    "Event",
    "GrpcFramingError",
    "GrpcStatus",
    "Headers",
    "PermanentError",
    "Request",
    "Response",
    "RetryableError",
    "StatusCode",
    "__version__",
    "grpc_frame",
    "serve",
]
