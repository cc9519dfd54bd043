"""The Kinesis stream of a mirrored run: moto's threaded server on 127.0.0.1.

The driver runs it for the whole ``runtests.py`` subprocess (and its forked workers),
so the relay's puts go over real HTTP and nothing can reach AWS. Afterwards the records
on the stream are counted: the events of the writes that were committed.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NAME = "djsuite-ops"
REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@contextmanager
def moto_stream() -> Iterator[str]:
    """Serve Kinesis on 127.0.0.1 with the stream created; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    for name, value in CREDENTIALS.items():
        os.environ.setdefault(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto keeps its state per process, not per server: start from nothing.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
        _client(endpoint).create_stream(StreamName=NAME, ShardCount=1)
        yield endpoint
    finally:
        server.stop()


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint)


def records_on_stream(endpoint: str) -> int:
    """Stream records written so far, over every shard, from the start.

    With KPL aggregation one record may hold several events, so this counts puts.
    """
    client = _client(endpoint)
    total = 0
    for shard in client.list_shards(StreamName=NAME)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=NAME, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            total += len(page["Records"])
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
    return total
