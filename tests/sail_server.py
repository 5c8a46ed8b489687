"""A local Sail Spark Connect server for the suite's native-Delta tests (run with ``.venv-sail``'s Python).

Prints ``sc://127.0.0.1:<port>`` on its first line once it listens, then serves until killed or
until the process that started it is gone.
Sail runs the Python UDFs of the clients in its own worker processes, with this environment's
lakecurate (``.venv-sail`` installs the checkout in editable mode).

    .venv-sail/bin/python tests/sail_server.py
"""

from __future__ import annotations

import os
import time

from pysail.spark import SparkConnectServer


def main() -> None:
    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    host, port = server.listening_address
    print(f"sc://{host}:{port}", flush=True)
    parent = os.getppid()
    while os.getppid() == parent:  # the test run that started it ended, however it ended: so does the server
        time.sleep(1)
    os._exit(0)  # the server's threads are not daemons


if __name__ == "__main__":
    main()
