"""What the Kinesis stream and the DynamoDB target share: a lazily made boto3 client
whose own retries are off (we pace retries ourselves), and full-jitter backoff."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import boto3
from botocore.config import Config


class AwsClient:
    """A boto3 client for one service, created on first use (boto3 clients are
    thread-safe), and the backoff its callers sleep between attempts."""

    def __init__(
        self,
        service: str,
        region_name: str = "us-east-1",
        endpoint_url: str | None = None,
        max_attempts: int = 8,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        client_kwargs: dict[str, Any] | None = None,
        max_pool_connections: int = 10,
    ) -> None:
        self.service = service
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 1, "mode": "standard"},
            max_pool_connections=max_pool_connections,
        )
        self._client_kwargs = client_kwargs or {}
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = boto3.session.Session().client(
                        self.service,
                        region_name=self.region_name,
                        endpoint_url=self.endpoint_url,
                        config=self._config,
                        **self._client_kwargs,
                    )
        return self._client

    def sleep(self, attempt: int) -> None:
        """Full-jitter exponential backoff before attempt ``attempt + 1``."""
        time.sleep(random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt)))
