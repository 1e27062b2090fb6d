"""A local S3 server for the benchmarks: moto's, on a free port of 127.0.0.1 (tests/conftest.py
has the tests' own). No traffic leaves this machine."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Run the server for as long as the block does; yields its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def point_at(endpoint: str, **more: str) -> None:
    """Send boto3 and pyarrow (here and in the Ray workers started after) to `endpoint`."""
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", **more)
