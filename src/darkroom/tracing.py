"""Tracing with OpenTelemetry when `DARKROOM_OTEL_ENDPOINT` is set; nothing at all when not.

A task is one trace across processes: the API's request span (continuing the client's
`traceparent`, if it sent one) is the parent of everything after it. The create stamps the
span's W3C `traceparent` on the task's row; the worker that claims the task records its
`queued`, `generating` and `finishing` spans under it, and the callback sender its `callback`
span, whichever process each runs in. Spans go to an OTLP/HTTP collector in batches.

Unset, no OpenTelemetry module is imported, no span object is made and the row's
`trace_parent` stays empty: the cost is one attribute check per request.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

Attributes = Mapping[str, str | int | float | bool]


class NoTracing:
    """What runs when tracing is off: every call does nothing."""

    enabled = False

    @contextmanager
    def span(
        self, name: str, *, parent: str | None = None, attributes: Attributes | None = None
    ) -> Iterator[Span | None]:
        yield None

    def record(
        self,
        name: str,
        *,
        parent: str | None,
        start: datetime,
        end: datetime,
        attributes: Attributes | None = None,
    ) -> None:
        return None

    def shutdown(self) -> None:
        return None


class OtelTracing(NoTracing):
    """Spans of one process (`service`), exported in batches to `endpoint` over OTLP/HTTP."""

    enabled = True

    def __init__(self, endpoint: str, service: str) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise RuntimeError(
                "DARKROOM_OTEL_ENDPOINT is set but OpenTelemetry is not installed: "
                "pip install 'darkroom[otel]'"
            ) from exc
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("darkroom")
        self.propagator = TraceContextTextMapPropagator()

    def _parent(self, traceparent: str | None) -> Context | None:
        return self.propagator.extract({"traceparent": traceparent}) if traceparent else None

    @contextmanager
    def span(
        self, name: str, *, parent: str | None = None, attributes: Attributes | None = None
    ) -> Iterator[Span | None]:
        """A span around a block, current within it (so `current_traceparent` names it)."""
        with self.tracer.start_as_current_span(
            name, context=self._parent(parent), attributes=attributes
        ) as span:
            yield span

    def record(
        self,
        name: str,
        *,
        parent: str | None,
        start: datetime,
        end: datetime,
        attributes: Attributes | None = None,
    ) -> None:
        """A span that has already happened (a task's wait in the queue, a batch's generation),
        under the trace `parent` names; none without a parent (a task made untraced)."""
        if parent is None:
            return
        span = self.tracer.start_span(
            name, context=self._parent(parent), start_time=_ns(start), attributes=attributes
        )
        span.end(end_time=_ns(max(start, end)))

    def shutdown(self) -> None:
        """Send what is still batched (a process's last spans), then stop."""
        self.provider.shutdown()


def tracing_for(endpoint: str | None, service: str) -> NoTracing:
    return NoTracing() if endpoint is None else OtelTracing(endpoint, service)


def current_traceparent() -> str | None:
    """The W3C traceparent of the span current here, or None (always None with tracing off:
    OpenTelemetry was never imported)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, Any] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)
