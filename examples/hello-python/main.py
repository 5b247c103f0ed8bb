"""A Lambda-style handler: `event` is the JSON request body, `context` the invocation."""
import os

GREETING = os.environ.get("GREETING", "Hello")


def handler(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else (event or "world")
    print(f"greeting {name}")
    return {
        "message": f"{GREETING}, {name}!",
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
