"""The result store a process uses, from its settings: a local folder, or an S3 bucket."""

from __future__ import annotations

from darkroom.settings import Settings
from darkroom.storage.base import ResultStorage
from darkroom.storage.local import LocalStorage


def storage_from_settings(settings: Settings) -> ResultStorage:
    if settings.storage_url:
        from darkroom.storage.s3 import S3Storage

        return S3Storage.from_url(
            settings.storage_url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            public_endpoint_url=settings.s3_public_endpoint_url,
        )
    return LocalStorage(settings.results_dir)
