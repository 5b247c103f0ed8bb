"""Small HTTP clients: one timed request, and bursts of simultaneous ones."""

import asyncio
import http.client
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes
    seconds: float = 0.0
    activation: str = field(default="")


def request(port, method, path, body=b"", headers=None, timeout=60.0):
    """One request on a fresh connection to 127.0.0.1:port. The connection
    is opened before the clock starts: `seconds` is send → full response."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.connect()
        began = time.perf_counter()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - began
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        return Response(resp.status, hdrs, data, elapsed, hdrs.get("x-flick-activation-id", ""))
    finally:
        conn.close()


def post_json(port, path, timeout=60.0):
    return request(port, "POST", path, b"{}", {"Content-Type": "application/json"}, timeout)


def poll_until_ok(port, path, timeout, interval=0.002, proc=None):
    """POSTs `{}` to `path` until it answers 200. Returns (seconds since the
    call, first 200 response) or (None, last error) on timeout or if `proc`
    exits."""
    began = time.perf_counter()
    deadline = began + timeout
    last = None
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            return None, f"process exited with {proc.returncode}"
        try:
            resp = post_json(port, path, timeout=max(1.0, deadline - time.perf_counter()))
            if resp.status == 200:
                return time.perf_counter() - began, resp
            last = f"HTTP {resp.status}: {resp.body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(interval)
    return None, last


# --- bursts --------------------------------------------------------------------


async def _one(port, path, go, timeout):
    """Connects, waits for `go`, sends one POST and reads the answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        return {"status": "connect-error", "error": repr(e), "seconds": None, "activation": ""}
    await go.wait()
    began = time.perf_counter()
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode()
        )
        await writer.drain()
        # Connection: close, so the response ends at EOF.
        raw = await asyncio.wait_for(reader.read(), timeout)
        elapsed = time.perf_counter() - began
        head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        activation = ""
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "x-flick-activation-id":
                activation = value.strip()
        return {"status": status, "seconds": elapsed, "activation": activation}
    except asyncio.TimeoutError:
        return {"status": "timeout", "seconds": None, "activation": ""}
    except (OSError, ValueError, IndexError) as e:
        return {"status": "error", "error": repr(e), "seconds": None, "activation": ""}
    finally:
        writer.close()


async def _burst(port, paths, timeout):
    go = asyncio.Event()
    tasks = [asyncio.create_task(_one(port, p, go, timeout)) for p in paths]
    # Let every connection be made before any request is sent, so the
    # requests arrive together rather than at connection speed.
    await asyncio.sleep(0.3)
    began = time.perf_counter()
    go.set()
    results = await asyncio.gather(*tasks)
    return time.perf_counter() - began, results


def burst(port, paths, timeout):
    """POSTs to every path in `paths` at once, one connection each. Returns
    (wall seconds from release to last answer, per-request results)."""
    return asyncio.run(_burst(port, paths, timeout))
