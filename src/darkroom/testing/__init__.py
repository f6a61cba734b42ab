"""Public fakes for tests of darkroom and of code built on it, with the real interfaces.

- `FakeClock`: a `darkroom.clock.Clock` that moves only when told, or when slept on.
- `TableResolver`: a callback `Resolver` answering from a table, offline.
- `FakeEngine`: an `Engine` without torch: flat pixels of the batch's size, one colour per
  seed, every call recorded; it can fail as a real engine would.
- `InMemoryTaskStore`: the task table as a queue (`TaskStore`'s methods), in memory, with the
  retention sweeps (`TaskRetention`'s) on the same rows.
- `InMemoryOutbox`: the callback outbox (`Outbox`'s methods); give it to the task table and the
  callbacks of the tasks that end there are queued in it.
- `InMemoryWorkerRegistry`: the workers table (`WorkerRegistry`'s methods).
- `InMemoryAccountReads`: the account reads a callback sender makes.

Each in-memory table is held to the real one on SQLite and PostgreSQL by one conformance suite
(tests/tasks/test_conformance.py, tests/tasks/test_outbox_conformance.py).
"""

from darkroom.testing.fakes import FakeClock, FakeEngine, TableResolver
from darkroom.testing.outbox import InMemoryAccountReads, InMemoryOutbox
from darkroom.testing.tasks import InMemoryTaskStore
from darkroom.testing.workers import InMemoryWorkerRegistry

__all__ = [
    "FakeClock",
    "FakeEngine",
    "InMemoryAccountReads",
    "InMemoryOutbox",
    "InMemoryTaskStore",
    "InMemoryWorkerRegistry",
    "TableResolver",
]
