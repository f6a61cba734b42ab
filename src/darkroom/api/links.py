"""Signed links to a task's result files, as the task's body (and its callback) carries them."""

from __future__ import annotations

from darkroom.api.services import Services
from darkroom.contract import Status
from darkroom.tasks.model import Task


def result_urls(task: Task, services: Services, request_base: str) -> list[str]:
    """Signed links to the task's files, valid until its results' lifetime ends: the API's own,
    or the bucket's when results are in S3."""
    if task.status is not Status.COMPLETED or task.finished_at is None:
        return []
    base = (services.settings.public_url or request_base).rstrip("/")
    expires = int(task.finished_at.timestamp()) + services.settings.result_ttl_s
    urls = []
    for key in task.result_keys:
        direct = services.storage.direct_link(key, expires)  # a bucket's presigned link
        if direct is not None:
            urls.append(direct)
            continue
        path = f"/v1/files/{key}"
        signature = services.signer.signature(path, expires)
        urls.append(f"{base}{path}?expires={expires}&signature={signature}")
    return urls
