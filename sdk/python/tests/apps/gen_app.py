"""A handler that is itself a generator (`gen_app.py sync`) or an async generator (`gen_app.py async`): each
item is one response message of a server-streaming call, sent as soon as it is produced."""

import asyncio
import sys

import watchdog_sdk


def handle(request):
    for message in request.grpc_messages():
        yield b"<" + message + b">"
    if request.metadata.get("x-fail"):
        raise watchdog_sdk.GrpcStatus(watchdog_sdk.StatusCode.RESOURCE_EXHAUSTED, "too many")


async def handle_async(request):
    async for message in request.stream_grpc_messages():
        await asyncio.sleep(0)
        yield b"<" + message + b">"
    if request.metadata.get("x-fail"):
        raise watchdog_sdk.GrpcStatus(watchdog_sdk.StatusCode.RESOURCE_EXHAUSTED, "too many")


if __name__ == "__main__":
    watchdog_sdk.serve(handle_async if sys.argv[1] == "async" else handle)
