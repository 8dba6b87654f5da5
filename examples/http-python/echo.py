"""Echo: answers every request with its own body and content type (ng-watchdog http mode).

An `async def` handler runs on the SDK's event loop; a plain `def` works too, on a thread pool, at about half
the throughput for work this small.
"""

import watchdog_sdk


async def handle(request):
    content_type = request.headers.get("content-type", "application/octet-stream")
    return watchdog_sdk.Response(200, {"content-type": content_type}, request.body)


if __name__ == "__main__":
    watchdog_sdk.serve(handle)
