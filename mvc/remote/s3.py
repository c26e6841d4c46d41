"""A remote in an S3 bucket (AWS or any S3-compatible server), through boto3.

Keys live under the URL's prefix. Refs move with S3 conditional writes: `If-None-Match: *`
creates a ref only if it does not exist, `If-Match: <etag>` replaces it only if nobody
changed it since we read it; the server answers 412 PreconditionFailed otherwise, which
becomes `RefConflict`. Connect timeouts are short and retries few, so a dead endpoint
fails in seconds with a one-line error instead of hanging.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mvc.errors import RemoteError
from mvc.remote.transport import RefConflict, RemoteNotFoundError

CONNECT_TIMEOUT = 3
READ_TIMEOUT = 120
MAX_ATTEMPTS = 2
MAX_POOL_CONNECTIONS = 16
LIST_PAGE_SIZE = 1000
DEFAULT_REGION = "us-east-1"

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_CREDENTIAL_HINT = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"


_CAS_ATTEMPTS = 8


class S3Transport:
    """Remote storage under `s3://bucket/prefix`; one boto3 client shared by all threads."""

    def __init__(self, bucket: str, prefix: str = "", endpoint: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        region = (
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        )
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            s3={"addressing_style": "path"} if self.endpoint else {},
        )
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=region, config=config
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return f"{self.url} (endpoint {self.endpoint})" if self.endpoint else self.url

    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Turn boto3's exceptions into one-line `RemoteError`s that say what to do."""
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code == "NoSuchBucket":
                raise RemoteError(
                    f"bucket '{self.bucket}' does not exist at {self._where()}",
                    hint="create the bucket first, or check the URL and --endpoint",
                ) from None
            if code in _NOT_FOUND_CODES and key is not None:
                raise RemoteNotFoundError(f"'{key}' not found on remote {self.url}") from None
            if code in _CREDENTIAL_CODES:
                raise RemoteError(
                    f"{self._where()} refused our credentials ({code})", hint=_CREDENTIAL_HINT
                ) from None
            message = error.get("Message") or str(exc)
            raise RemoteError(f"S3 error from {self._where()}: {code}: {message}") from None
        except NoCredentialsError:
            raise RemoteError(
                f"no S3 credentials found for {self.url}", hint=_CREDENTIAL_HINT
            ) from None
        except (EndpointConnectionError, ConnectionError, ReadTimeoutError) as exc:
            raise RemoteError(
                f"cannot reach {self._where()}: {exc.__class__.__name__}",
                hint="check --endpoint / AWS_ENDPOINT_URL and that the server is up",
            ) from None

    def get(self, key: str) -> bytes:
        with self._errors(key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except RemoteNotFoundError:
            return False
        return True

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def list(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix)
        skip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors():
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
            ):
                for item in page.get("Contents", []):
                    yield item["Key"][skip:]

    def read_ref(self, name: str) -> tuple[bytes | None, str | None]:
        try:
            with self._errors(name):
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
                return response["Body"].read(), response["ETag"]
        except RemoteNotFoundError:
            return None, None

    def cas_ref(self, name: str, value: bytes, expected_token: str | None) -> str:
        """Conditional write of a ref; exactly one of several racing writers wins.

        412 means another writer won. SeaweedFS also answers racing conditional writes with
        409 or 5xx, sometimes to every racer, so those are settled by reading the ref back:
        our value means we won; a moved ref means we lost; an unchanged ref means nobody
        won yet, and the write is tried again (bounded, with jittered back-off).
        """
        for attempt in range(_CAS_ATTEMPTS):
            etag = self._conditional_put(name, value, expected_token)
            if etag is not None:
                return etag
            current, token = self.read_ref(name)
            if current == value and token is not None:
                return token  # ref values are commit ids: equal values are equal pushes
            unchanged = token is None if expected_token is None else token == expected_token
            if not unchanged:
                raise RefConflict(name)
            time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))
        raise RemoteError(
            f"{self._where()} kept failing conditional writes to {name}",
            hint="try again; if it persists, check the server's health",
        )

    def _conditional_put(self, name: str, value: bytes, expected_token: str | None) -> str | None:
        """The new ETag; None when the outcome is ambiguous (409/5xx); RefConflict on 412."""
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if expected_token is None else {"IfMatch": expected_token}
        try:
            with self._errors(name):
                try:
                    response = self._client.put_object(
                        Bucket=self.bucket, Key=self._key(name), Body=value, **condition
                    )
                except ClientError as exc:
                    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                    code = exc.response.get("Error", {}).get("Code")
                    if code == "PreconditionFailed" or status == 412:
                        raise RefConflict(name) from None
                    if (
                        code == "ConditionalRequestConflict"
                        or status == 409
                        or (status is not None and status >= 500)
                    ):
                        return None
                    raise
        except RemoteNotFoundError:
            # If-Match on a ref deleted since we read it: it changed, too.
            raise RefConflict(name) from None
        return response["ETag"]
