"""Settings from the environment (prefix FUNNELSYNC_) with embedded defaults for `make demo`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from connectors.http import RetryPolicy
from funnel_templates.loader import dirs_from_env, use_template_dirs

# The API token is also the dashboard's password: shorter ones are guessable by brute force.
MIN_API_TOKEN_LENGTH = 16
GENERATE_TOKEN_HINT = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def check_api_token(token: str, source: str) -> str:
    """The token itself when it is long enough; otherwise the service refuses to start, saying how
    to make a good one (an empty token would let anyone in)."""
    if len(token.strip()) < MIN_API_TOKEN_LENGTH:
        raise ValueError(
            f"{source} must be at least {MIN_API_TOKEN_LENGTH} characters "
            f"(it has {len(token.strip())}); generate one with: {GENERATE_TOKEN_HINT}"
        )
    return token


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNELSYNC_", env_file=".env", extra="ignore")

    # Folder for the embedded defaults: the SQLite file and the generated key file.
    data_dir: Path = Path("var")
    # Default: a SQLite file under data_dir. Production: postgresql+asyncpg://user:pass@host/db
    database_url: str | None = None
    # Required for /api and the dashboard; when unset the service refuses admin requests.
    api_token: SecretStr | None = None
    # Fernet key for credentials at rest; when unset a key file is generated once under data_dir.
    secret_key: SecretStr | None = None
    # Public base URL of this service, used for webhook registration in the CRMs.
    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # Run migrations on start; on by default for the embedded SQLite, off for PostgreSQL.
    auto_migrate: bool | None = None
    scheduler_enabled: bool = True
    # How often the scheduler jobs run; a webhook also wakes the inbox job at once.
    inbox_interval_seconds: float = Field(default=5, gt=0)
    outbox_interval_seconds: float = Field(default=2, gt=0)
    # SLA escalations and follow-up tasks are checked this often.
    rules_interval_seconds: float = Field(default=30, gt=0)
    reconcile_interval_seconds: float = Field(default=300, gt=0)
    # The outbox's retry budget: a command the CRM keeps refusing is dead-lettered after this many
    # attempts or this many hours, whichever comes first (then an operator retries it by hand).
    outbox_max_attempts: int = Field(default=8, ge=1)
    outbox_max_age_hours: float = Field(default=24, gt=0)
    # The first retry of a failed command waits this long; each next one twice as long (jittered),
    # at most outbox_retry_max_delay_seconds.
    outbox_retry_base_delay_seconds: float = Field(default=5, gt=0)
    outbox_retry_max_delay_seconds: float = Field(default=1800, gt=0)
    # One CRM call: a timeout, 5xx or rate-limit answer is retried in place this many times in all,
    # with exponential backoff from crm_retry_base_delay_seconds up to crm_retry_max_delay_seconds,
    # for at most crm_retry_max_seconds; then the caller sees the failure (the outbox reschedules
    # the command, a provisioning run stops with "run the same command again").
    crm_retry_attempts: int = Field(default=6, ge=1)
    crm_retry_max_seconds: float = Field(default=120, gt=0)
    crm_retry_base_delay_seconds: float = Field(default=0.5, ge=0)
    crm_retry_max_delay_seconds: float = Field(default=30, ge=0)
    # Incremental reconciles re-read this far behind the cursor (coarse CRM clocks, skew).
    reconcile_overlap_seconds: float = Field(default=600, ge=0)
    # Largest webhook body accepted (the CRMs send a few KiB).
    max_webhook_body: int = Field(default=1024 * 1024, ge=1024)
    # CRM addresses that resolve to private, loopback, link-local or other non-global networks are
    # refused (the credentials would go there); the sandboxes on 127.0.0.1 need this on.
    allow_private_crm: bool = False
    # Failed logins and bearer tokens per client address before answers turn into 429s.
    auth_failures_allowed: int = Field(default=10, ge=1)
    auth_failure_window_seconds: float = Field(default=300, gt=0)
    # Many connections per worker (app.concurrency): the outbox, inbox and reconcile jobs each work on
    # at most this many connections at once, in turns (an outbox turn sends at most
    # outbox_chunks_per_turn requests, an inbox turn processes one batch), round robin. A turn still
    # running after connection_turn_budget_seconds (an account starting to time out) goes on without
    # holding a slot, and a connection whose last CRM calls failed gets its turns outside the slots
    # from the start, so the healthy accounts always get theirs.
    connection_concurrency: int = Field(default=16, ge=1)
    connection_turn_budget_seconds: float = Field(default=2, gt=0)
    outbox_chunks_per_turn: int = Field(default=1, ge=1)
    # PostgreSQL connections each process keeps open (app.db.create_engine); None: enough for the jobs'
    # turns, 2 x connection_concurrency + 8.
    database_pool_size: int | None = Field(default=None, ge=1)
    # At shutdown (SIGTERM, Ctrl-C) no job starts any more and those running get this long to end;
    # one still running after it is cancelled, and what it had claimed is taken up after the restart.
    shutdown_grace_seconds: float = Field(default=25, ge=0)
    # While the webhook receiver of this process is busy (a burst of deliveries), an inbox run waits
    # up to this long for it to calm down, then mirrors one batch per connection and waits again
    # (app.webhooks.intake). 0: the inbox never gives way.
    inbox_yield_seconds: float = Field(default=5, ge=0)
    # Template automations' time-driven triggers (stalled, dates, delayed won/lost, recurrences) are
    # looked for this often; stage entries fire at ingest.
    automations_interval_seconds: float = Field(default=60, gt=0)
    # Messages to clients (app.messages) are delivered this often, and the deals' contacts read from
    # the CRM are reused for this long before a send reads them again.
    messages_interval_seconds: float = Field(default=5, gt=0)
    contacts_ttl_hours: float = Field(default=24, gt=0)
    # Your own template folders (os.pathsep-separated in the environment): their templates join the
    # shipped library, and one with a shipped template's key replaces it.
    templates_dir: Annotated[list[Path], NoDecode] = []

    @field_validator("templates_dir", mode="before")
    @classmethod
    def _split_template_dirs(cls, value: object) -> object:
        return list(dirs_from_env(value)) if isinstance(value, str) else value

    @field_validator("api_token")
    @classmethod
    def _api_token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_api_token(value.get_secret_value(), "FUNNELSYNC_API_TOKEN")
        return value

    @property
    def crm_retry(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.crm_retry_attempts,
            max_elapsed=self.crm_retry_max_seconds,
            base_delay=self.crm_retry_base_delay_seconds,
            max_delay=self.crm_retry_max_delay_seconds,
        )

    @property
    def resolved_pool_size(self) -> int:
        return self.database_pool_size or 2 * self.connection_concurrency + 8

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'funnelsync.db').as_posix()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = Settings()
    # Every process reads its settings here, so the template library follows them (`.env` included).
    use_template_dirs(settings.templates_dir)
    return settings
