"""Fingerprints of the secrets every process of a deployment must share (today: the one that
signs result links): the first process records its secret's, and a process whose secret
differs refuses to start rather than sign links the others reject.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from sqlalchemy import Connection, insert, select, update

from darkroom.db.database import Database
from darkroom.db.schema import fingerprints
from darkroom.settings import SecretRefused

FINGERPRINT_NAME = "link-signing-secret"


def fingerprint(secret: str) -> str:
    """What the database keeps of the secret: an HMAC made with it, which does not reveal it."""
    return hmac.new(secret.encode(), b"darkroom link-signing fingerprint", "sha256").hexdigest()


async def agree_on_secret(db: Database, secret: str) -> None:
    """Record this secret's fingerprint if the deployment has none; SecretRefused if it
    recorded another (two API processes would reject each other's links)."""
    mine = fingerprint(secret)

    def run(conn: Connection) -> str:
        query = select(fingerprints.c.fingerprint).where(fingerprints.c.name == FINGERPRINT_NAME)
        recorded: str | None = conn.execute(query).scalar_one_or_none()
        if recorded is None:
            conn.execute(
                insert(fingerprints).values(
                    name=FINGERPRINT_NAME, fingerprint=mine, recorded_at=datetime.now(UTC)
                )
            )
            return mine
        return recorded

    recorded = await db.write(run)
    if not hmac.compare_digest(recorded, mine):
        raise SecretRefused(
            "this process's link-signing secret is not the one the other processes of this "
            "deployment use: give every API process the same DARKROOM_SIGNING_SECRET. If you "
            "changed it on purpose, run `darkroom signing-secret --adopt` with the new one."
        )


async def adopt_secret(db: Database, secret: str) -> None:
    """Make `secret` the deployment's (links signed with the previous one stop working)."""
    values = {"fingerprint": fingerprint(secret), "recorded_at": datetime.now(UTC)}

    def run(conn: Connection) -> None:
        changed = conn.execute(
            update(fingerprints).where(fingerprints.c.name == FINGERPRINT_NAME).values(**values)
        ).rowcount
        if not changed:
            conn.execute(insert(fingerprints).values(name=FINGERPRINT_NAME, **values))

    await db.write(run)
