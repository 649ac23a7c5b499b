"""S3 through pyarrow: a filesystem from the standard AWS environment that fails fast, and what its errors mean.

pyarrow reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (or ~/.aws) and the region itself, but not
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (an S3-compatible store: MinIO, R2, ...): `endpoint_settings` does.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pyarrow.fs as pafs

from teacher_cache.base.errors import UserError, first_line

# Fail in seconds, not minutes: the AWS SDK's defaults retry a dead endpoint for a long time.
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 30.0  # pyarrow applies it on Windows and macOS only
MAX_ATTEMPTS = 2

# What the AWS SDK (through pyarrow's OSError text) says, and what the user should hear.
_S3_PROBLEMS = (
    (("NO_SUCH_BUCKET", "Bucket does not exist", "bucket does not exist", "NoSuchBucket"),
     "no such bucket: create it first, or check the URL"),
    (("INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId", "SignatureDoesNotMatch",
      "ACCESS_DENIED", "AccessDenied", "HTTP status 403"),
     "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions"),
    (("NETWORK_CONNECTION", "curlCode: 7", "curlCode: 28", "Couldn't connect", "Could not connect",
      "Timeout was reached", "Connection refused", "resolve host"),
     "endpoint unreachable: check AWS_ENDPOINT_URL and the network"),
)


def s3_problem(exc: BaseException) -> str:
    """What an S3 failure means, in a few words (the SDK's own first line when it is none of the usual ones)."""
    text = str(exc)
    for needles, words in _S3_PROBLEMS:
        if any(needle in text for needle in needles):
            return words
    return first_line(exc)


def endpoint_settings() -> dict:
    """pyarrow S3FileSystem arguments for AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL ('http://host:port'), if set."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return {}
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"AWS_ENDPOINT_URL={endpoint}: not an http(s)://host[:port] address")
    return {"endpoint_override": parsed.netloc, "scheme": parsed.scheme}


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3FileSystem from the standard AWS environment, with short timeouts and few retries (fail fast)."""
    endpoint = endpoint_settings()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(region=region, connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS), **endpoint)
