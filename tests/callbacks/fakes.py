"""An offline resolver: each host answers from a table, optionally differently on each call."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from darkroom.callbacks.addresses import IPAddress


class TableResolver:
    def __init__(self, table: dict[str, Sequence[Sequence[str]]]) -> None:
        """`table[host]` is the list of answers for the 1st, 2nd, ... lookup (the last repeats)."""
        self.table = table
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = self.table[host]
        index = min(self.calls.count(host), len(answers)) - 1
        return [ipaddress.ip_address(a) for a in answers[index]]
