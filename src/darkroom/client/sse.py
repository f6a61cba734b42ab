"""Reading a server-sent events stream (the WHATWG rules darkroom's events need)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    event: str
    data: str
    id: str | None


class EventParser:
    """Feed it lines (without their line ending); it gives back each event as it completes."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = Event(self._event or "message", "\n".join(self._data), self.last_id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment: keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self.last_id = value
        return None


def events(lines: Iterable[str], parser: EventParser) -> Iterator[Event]:
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


async def aevents(lines: AsyncIterable[str], parser: EventParser) -> AsyncIterator[Event]:
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
