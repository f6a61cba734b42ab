"""Everything a request handler needs, built once per app from Settings (the composition root)."""

from __future__ import annotations

from dataclasses import dataclass

from darkroom.accounts.cache import CachedKeys
from darkroom.accounts.store import AccountStore
from darkroom.api.failed_auth import FailedAuths
from darkroom.api.limits import RateLimiter
from darkroom.callbacks.policy import Resolver, SystemResolver
from darkroom.callbacks.sender import CallbackSender, SenderPolicy
from darkroom.clock import Clock, SystemClock
from darkroom.db.database import Database
from darkroom.engine.tokens import TokenCounter, load_token_counters
from darkroom.maintenance import Maintenance, MaintenancePolicy
from darkroom.metrics import ApiMetrics
from darkroom.moderation.image import image_check_enabled
from darkroom.moderation.prompt import PromptScreen
from darkroom.service.submit import SubmitPolicy, Submitter
from darkroom.settings import Settings
from darkroom.storage.base import ResultStorage
from darkroom.storage.factory import storage_from_settings
from darkroom.storage.signing import LinkSigner, load_or_create_secret
from darkroom.tasks.outbox import Outbox
from darkroom.tasks.queue_view import QueueView
from darkroom.tasks.render import ResultLinks
from darkroom.tasks.retention import TaskRetention
from darkroom.tasks.stats import TaskStats
from darkroom.tasks.store import TaskStore
from darkroom.tasks.workers import WorkerRegistry
from darkroom.tracing import NoTracing, tracing_for


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    clock: Clock  # the one every store, use case and duty of this app reads
    db: Database
    accounts: AccountStore
    keys: CachedKeys
    failed_auths: FailedAuths
    tasks: TaskStore
    stats: TaskStats
    queue: QueueView
    retention: TaskRetention
    workers: WorkerRegistry
    storage: ResultStorage
    signer: LinkSigner
    links: ResultLinks
    token_counters: dict[str, TokenCounter]
    rate_limiter: RateLimiter
    resolver: Resolver
    prompt_screen: PromptScreen
    strict_check_available: bool
    submitter: Submitter
    metrics: ApiMetrics
    tracing: NoTracing

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock | None = None) -> Services:
        """Every collaborator of the API role; `clock` (default: the system's) stamps every
        row the stores write and every time the use cases compare."""
        clock = clock or SystemClock()
        db = Database(settings.resolved_database_url)
        accounts = AccountStore(db, clock)
        tasks, stats, workers = TaskStore(db, clock), TaskStats(db), WorkerRegistry(db, clock)
        queue = QueueView(stats)
        storage = storage_from_settings(settings)
        token_counters = load_token_counters(settings)
        resolver = SystemResolver()
        prompt_screen = PromptScreen.load(settings.moderation_lists)
        strict_check_available = image_check_enabled(settings)
        signer = LinkSigner(settings.signing_secret or load_or_create_secret(settings.data_dir))
        return cls(
            settings=settings,
            clock=clock,
            db=db,
            accounts=accounts,
            keys=CachedKeys(accounts, settings.key_cache_s),
            failed_auths=FailedAuths(settings.failed_auth_rate_limit),
            tasks=tasks,
            stats=stats,
            queue=queue,
            retention=TaskRetention(db, clock),
            workers=workers,
            storage=storage,
            signer=signer,
            links=ResultLinks(storage, signer, settings.result_ttl_s, settings.public_url),
            token_counters=token_counters,
            rate_limiter=RateLimiter.from_url(
                settings.redis_url, settings.default_rate_limit, settings.redis_prefix
            ),
            resolver=resolver,
            prompt_screen=prompt_screen,
            strict_check_available=strict_check_available,
            submitter=Submitter(
                SubmitPolicy.from_settings(settings),
                tasks,
                queue,
                workers,
                prompt_screen,
                token_counters,
                resolver,
                strict_check_available=strict_check_available,
                clock=clock,
            ),
            metrics=ApiMetrics(),
            tracing=tracing_for(settings.otel_endpoint, "darkroom-api"),
        )

    def maintenance(self, storage: ResultStorage | None = None) -> Maintenance:
        """The API's background duties on the tables (rescue, expiry, retention), on this app's
        result store or `storage`."""
        return Maintenance(
            MaintenancePolicy.from_settings(self.settings),
            self.tasks,
            self.retention,
            self.workers,
            storage or self.storage,
            Outbox(self.db),
            clock=self.clock,
        )

    def callback_sender(self) -> CallbackSender:
        """The API's other background duty: delivering the callback outbox. Made when the app
        starts its duties (its TLS context costs ~50 ms, which an app without them never pays)."""
        return CallbackSender(
            SenderPolicy.from_settings(self.settings), Outbox(self.db), self.tasks,
            self.accounts, self.links, self.resolver, clock=self.clock,
            metrics=self.metrics, tracing=self.tracing,
        )  # fmt: skip
