"""An http-mode ng-watchdog function: one long-lived process, many requests at once (watchdog_sdk).

CloudEvents of type com.example.order.created get a reply event; other events are acknowledged with no reply
(202); plain HTTP requests get a greeting.
"""

import json

import watchdog_sdk

ORDER_CREATED = "com.example.order.created"


def handle(request):
    if request.kind == "cloudevent":
        attributes = request.event.attributes
        if attributes["type"] != ORDER_CREATED:
            return None  # 202, no reply event
        try:
            order = json.loads(request.event.data or b"{}")
        except ValueError as error:
            # Permanent: 400, so Knative does not retry an event that can never succeed.
            raise watchdog_sdk.PermanentError(f"order is not JSON: {error}") from None
        # Our own reply type, which the trigger on ORDER_CREATED does not match.
        return watchdog_sdk.CloudEvent(
            {"type": "com.example.order.accepted", "source": "/order-py", "datacontenttype": "application/json"},
            json.dumps({"status": "accepted", "order": order, "id": attributes["id"]}),
        )
    name = request.body.decode(errors="replace") or "world"
    return f"Hello, {name}! ({request.method} {request.path})\n".encode()


if __name__ == "__main__":
    watchdog_sdk.serve(handle)
