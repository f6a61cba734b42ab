"""The link-signing secret: generated once per install, owner-only, agreed on by every process."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from darkroom.api.app import create_app
from darkroom.db.database import Database
from darkroom.db.fingerprints import adopt_secret, agree_on_secret
from darkroom.settings import SecretRefused, Settings
from darkroom.storage.signing import SECRET_FILE, LinkSigner, load_or_create_secret

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


def test_the_first_start_generates_a_secret_kept_owner_only(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path / "data")
    path = tmp_path / "data" / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load_or_create_secret(tmp_path / "data") == first, "kept, not made anew"
    assert load_or_create_secret(tmp_path / "other") != first, "each install has its own"


def test_a_published_secret_in_the_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("dev-insecure-signing-secret\n")
    with pytest.raises(SecretRefused, match="published"):
        load_or_create_secret(tmp_path)


def test_a_signature_that_is_not_ascii_is_simply_wrong() -> None:
    signer = LinkSigner("k" * 32)
    good = signer.signature("/v1/files/a/1.png", 10)
    assert signer.is_authentic("/v1/files/a/1.png", 10, good)
    for forged in ("é" * 64, "\ud800", "", good.upper()):
        assert not signer.is_authentic("/v1/files/a/1.png", 10, forged)


async def test_processes_with_different_secrets_refuse_to_share_a_database(db: Database) -> None:
    await agree_on_secret(db, "a" * 32)
    await agree_on_secret(db, "a" * 32)  # the same secret: agreed
    with pytest.raises(SecretRefused, match="same DARKROOM_SIGNING_SECRET"):
        await agree_on_secret(db, "b" * 32)
    await adopt_secret(db, "b" * 32)  # changed on purpose
    await agree_on_secret(db, "b" * 32)
    with pytest.raises(SecretRefused):
        await agree_on_secret(db, "a" * 32)


async def test_an_api_with_another_secret_does_not_start(settings: Settings, db: Database) -> None:
    first = create_app(settings.model_copy(update={"signing_secret": "a" * 32}))
    async with first.router.lifespan_context(first):
        pass
    other = create_app(settings.model_copy(update={"signing_secret": "b" * 32}))
    with pytest.raises(SecretRefused):
        async with other.router.lifespan_context(other):
            pass


async def test_a_link_signed_with_the_old_published_secret_is_refused(
    client: httpx.AsyncClient,
) -> None:
    forged = LinkSigner("dev-insecure-signing-secret")
    path = "/v1/files/task-unified-1-abcdefgh/1.png"
    signature = forged.signature(path, 4_000_000_000)
    response = await client.get(f"{path}?expires=4000000000&signature={signature}")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
