"""Credits on the wire are decimals (0.45); in the database they are integer micro-credits."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MICRO = 1_000_000


def to_micro(credits: float | str | Decimal) -> int:
    """Exact for any price written with up to six decimals (0.45 -> 450000, never 449999)."""
    value = Decimal(str(credits)) * MICRO
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def to_credits(micro: int) -> float:
    """The wire's number: the nearest float to micro / 10^6 (0.45, not 0.45000000000000001)."""
    return float(Decimal(micro) / MICRO)
