"""Fixtures of the intake tests: a real S3-compatible HTTP server (moto) on a free loopback port."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from moto.server import ThreadedMotoServer
from mypy_boto3_s3 import S3Client

from deploy.local.broker import free_port

S3_REGION = "eu-central-1"
S3_ACCESS_KEY_ID = "intake-test"
S3_SECRET_ACCESS_KEY = "intake-test-secret"  # moto accepts any credentials


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test S3 server, and a client for it."""

    endpoint_url: str
    name: str
    client: S3Client


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 API served over HTTP on 127.0.0.1, for the session."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> S3Bucket:
    """A new, empty bucket for one test."""
    client = boto3.session.Session().client(
        "s3", endpoint_url=s3_endpoint, region_name=S3_REGION, aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
    )
    name = f"intake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": S3_REGION})
    return S3Bucket(endpoint_url=s3_endpoint, name=name, client=client)
