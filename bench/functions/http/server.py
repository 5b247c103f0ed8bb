"""A no-op HTTP/1.1 server on $PORT: every request gets 200 and `{}`.

Raw asyncio rather than http.server, so the server itself costs as little as
possible and the benchmark sees what flick adds in front of it. Connections
are kept alive; request bodies are framed by Content-Length (what flick's
proxy and wrk send).

Importable too: `serve(port, respond)` runs the same loop with another
`respond(body) -> bytes`; the bare Python baseline uses that to call a
handler per request (bench/baselines/python_loop.py).
"""

import asyncio
import os

STATUS_LINE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "


async def _connection(reader, writer, respond):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length) if length else b""
            out = respond(body)
            writer.write(b"%s%d\r\n\r\n%s" % (STATUS_LINE, len(out), out))
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port, respond):
    server = await asyncio.start_server(lambda r, w: _connection(r, w, respond), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(os.environ["PORT"]), lambda body: b"{}"))
