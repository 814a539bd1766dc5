"""The bare floor: run()'s own work behind the least Python can put around it, no HTTP library at all.

A raw asyncio protocol on uvloop that splits the bytes it reads into requests by their Content-Length, calls
the rendered score.py's parse_rows() and predict_rows() on each body and answers the labels in one write: no
HTTP parser, no ids, no checks, no log, no batching, no time limit. Not a server anyone should run; it is what
a request costs here beyond run() when nothing else is done, the bound of the latency goal. Two processes,
each with its own SO_REUSEPORT socket on one port, as the project's service runs its workers.
    python bare.py PORT SCORE_PY MODEL_DIR
"""

import asyncio
import importlib.util
import os
import signal
import socket
import sys

import orjson
import uvloop
from two_processes import run_twice

HEAD = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


def load(script: str, model_dir: str):
    os.environ["AZUREML_MODEL_DIR"] = model_dir
    spec = importlib.util.spec_from_file_location("bare_score", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    return module


class Bare(asyncio.Protocol):
    score = None  # the loaded score.py, set before serving

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray()
        self.body_at = self.end = None

    def data_received(self, data):
        self.buffer += data
        while True:
            if self.end is None:
                head_end = self.buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    return
                head = bytes(self.buffer[:head_end]).lower()
                at = head.find(b"\r\ncontent-length:")
                length = int(head[at + 17 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                self.body_at, self.end = head_end + 4, head_end + 4 + length
            if len(self.buffer) < self.end:
                return
            body = bytes(self.buffer[self.body_at : self.end])
            del self.buffer[: self.end]
            self.end = None
            try:
                answer, status = orjson.dumps(self.score.predict_rows(self.score.parse_rows(body))), 200
            except (ValueError, TypeError, KeyError) as exc:  # the readiness probe's empty body, say
                answer, status = orjson.dumps({"error": str(exc)}), 400
            self.transport.write(HEAD % (status, b"OK" if status == 200 else b"Bad Request", len(answer)) + answer)


def serve(port: int, script: str, model_dir: str) -> None:
    Bare.score = load(script, model_dir)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)

    async def main():
        server = await asyncio.get_running_loop().create_server(Bare, sock=sock)
        await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvloop.run(main())


if __name__ == "__main__":
    run_twice(serve, int(sys.argv[1]), sys.argv[2], sys.argv[3])
