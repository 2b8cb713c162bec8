"""moto's S3 server on loopback, shared by the tests that need a real S3 endpoint."""

from __future__ import annotations

import contextlib
import logging
import socket
import urllib.request
from collections.abc import Iterator

TEST_KEYS = {
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[tuple[str, object]]:
    """(endpoint, boto3 client) of a moto S3 server on 127.0.0.1 holding `bucket`; stopped after.

    The server's access log is silenced: once a flow has run, Prefect's console handler would
    carry it to stderr, and several tests count stderr lines.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        # moto keeps its buckets in process-wide state: an earlier test's objects would still be
        # there (tests share worker processes under pytest-xdist), so every server starts empty.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        yield endpoint, client
    finally:
        server.stop()
        werkzeug.setLevel(level)
