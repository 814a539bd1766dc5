"""How the ceiling and the bare floor run, as the project's service runs its workers: two forked processes,
each serving its own SO_REUSEPORT socket on one port; SIGTERM or SIGINT to the parent stops both."""

import os
import signal


def run_twice(serve, *args):
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            serve(*args)
            os._exit(0)
        children.append(pid)

    def stop(signum, frame):
        for child in children:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        os.waitpid(child, 0)
