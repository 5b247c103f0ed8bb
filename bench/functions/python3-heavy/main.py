import time

import numpy
import pandas


def handler(event, context):
    # The bench holds one instance busy with {"sleep_ms": N} to make flick
    # start a second one.
    if event.get("sleep_ms"):
        time.sleep(event["sleep_ms"] / 1000)
    return {"numpy": numpy.__version__, "pandas": pandas.__version__}
