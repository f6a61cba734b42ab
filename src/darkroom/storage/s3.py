"""Results in an S3-compatible bucket (the `s3` extra: boto3), reached through presigned links.

For a fleet: every worker uploads to the bucket, every API process links to it, and clients
download from the bucket itself, not through the API. Credentials come from boto3's usual chain
(environment, shared files, instance roles); `DARKROOM_S3_ENDPOINT_URL` points it at MinIO,
Ceph, R2 or any other S3-compatible server.
"""

from __future__ import annotations

import time
from typing import Any

from darkroom.settings import MAX_LINK_S, parse_s3_url
from darkroom.storage.base import StorageUnavailable, check_key

S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 20.0


class StagedUpload:
    """A result held in memory: S3 has no rename, so it is uploaded only when published, after
    its image passed the check, and a refused one never reaches the bucket."""

    def __init__(self, storage: S3Storage, key: str, data: bytes) -> None:
        self._storage = storage
        self._key = key
        self._data: bytes | None = data
        self.size = len(data)

    def publish(self) -> None:
        if self._data is None:
            raise RuntimeError("this result was discarded")
        self._storage.put(self._key, self._data)

    def discard(self) -> None:
        self._data = None


class S3Storage:
    """Results in a bucket. `link_client` signs the links clients follow: the same client, or
    one for the address clients reach the bucket at when the servers reach it at another (a
    MinIO beside them on a private network)."""

    def __init__(
        self, client: Any, bucket: str, prefix: str = "", *, link_client: Any | None = None
    ) -> None:
        self.client = client
        self.link_client = link_client or client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        public_endpoint_url: str | None = None,
    ) -> S3Storage:
        import boto3
        from botocore.config import Config

        bucket, prefix = parse_s3_url(url)
        # Explicit timeouts: botocore's 60 s read timeout let a hung S3 pin one upload for 45 s
        # and more; a result is a few MB, so 5 s to connect and 20 s between bytes is plenty.
        config = Config(
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=S3_CONNECT_TIMEOUT_S,
            read_timeout=S3_READ_TIMEOUT_S,
        )
        client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        link_client = None
        if public_endpoint_url:  # signing is local: this client never connects anywhere
            link_client = boto3.client(
                "s3", endpoint_url=public_endpoint_url, region_name=region, config=config
            )
        return cls(client, bucket, prefix, link_client=link_client)

    def verify(self) -> None:
        """The bucket answers to these credentials (HEAD bucket); else what to fix."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reason = {
                "404": "does not exist",
                "NoSuchBucket": "does not exist",
                "403": "refuses these credentials",
                "AccessDenied": "refuses these credentials",
            }.get(code, f"answered {code or exc}")
            raise StorageUnavailable(
                f"the bucket {self.bucket!r} of DARKROOM_STORAGE_URL {reason}"
                " (credentials come from AWS_* variables, ~/.aws or the instance role)"
            ) from exc
        except BotoCoreError as exc:  # no credentials, no endpoint, ...
            raise StorageUnavailable(
                f"cannot reach the bucket {self.bucket!r} of DARKROOM_STORAGE_URL: {exc}"
            ) from exc

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def stage(self, key: str, data: bytes) -> StagedUpload:
        check_key(key)
        return StagedUpload(self, key, data)

    def put(self, key: str, data: bytes) -> None:
        """Upload; S3 acknowledges a PUT only once the object is stored durably."""
        self.client.put_object(
            Bucket=self.bucket, Key=self.object_key(key), Body=data, ContentType="image/png"
        )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from None
            raise
        data: bytes = answer["Body"].read()
        return data

    def sweep_staging(self, older_than_s: float) -> int:
        return 0  # staged results live in the worker's memory, never in the bucket

    def direct_link(self, key: str, expires: int) -> str | None:
        """A presigned GET that stops working at `expires`: signed now, for the time left."""
        seconds = max(1, min(MAX_LINK_S, expires - int(time.time())))
        url: str = self.link_client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=seconds,
        )
        return url
