"""The ceiling: a raw ASGI app on uvicorn (httptools, uvloop) that reads the body and answers [0].

Two processes, each with its own SO_REUSEPORT socket on one port, as the project's service runs its workers:
what Python's fastest HTTP stack does with no parsing and no model at all.
    python ceiling.py PORT
"""

import socket
import sys

import uvicorn
from two_processes import run_twice

HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"3")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"[0]"})


def serve(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    run_twice(serve, int(sys.argv[1]))
