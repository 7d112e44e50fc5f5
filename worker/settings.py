"""Settings from environment variables (and a ``.env`` file); secrets are ``SecretStr``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from producer.schema import WAVE_MAX_AGENTS

# Region → domain, from the official SDKs' region host tables (reference §1.1).
REGION_DOMAINS: dict[str, str] = {
    "us_east_1": "mypurecloud.com",
    "eu_west_1": "mypurecloud.ie",
    "ap_southeast_2": "mypurecloud.com.au",
    "ap_northeast_1": "mypurecloud.jp",
    "eu_central_1": "mypurecloud.de",
    "us_west_2": "usw2.pure.cloud",
    "ca_central_1": "cac1.pure.cloud",
    "ap_northeast_2": "apne2.pure.cloud",
    "eu_west_2": "euw2.pure.cloud",
    "ap_south_1": "aps1.pure.cloud",
    "us_east_2": "use2.us-gov-pure.cloud",
    "sa_east_1": "sae1.pure.cloud",
    "me_central_1": "mec1.pure.cloud",
    "ap_northeast_3": "apne3.pure.cloud",
    "eu_central_2": "euc2.pure.cloud",
    "mx_central_1": "mxc1.pure.cloud",
    "ap_southeast_1": "apse1.pure.cloud",
    "eusc_de_east_1": "edee1.eusc-pure.cloud",
}


class Settings(BaseSettings):
    """Everything the worker and the CLI read from the environment."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    genesys_region: str | None = Field(
        default=None, description="Genesys Cloud region key, e.g. us_east_1 or eu_west_1."
    )
    genesys_api_url: str | None = Field(
        default=None,
        description="Explicit API base URL (the emulator or a gateway); overrides the region.",
    )
    genesys_client_id: str = Field(default="", description="OAuth client-credentials client id.")
    orgs_file: Path | None = Field(
        default=None,
        description="TOML file of further Genesys orgs (or OAuth clients) this fleet serves; "
        "the GENESYS_* settings are the org named default.",
    )
    genesys_client_secret: SecretStr = Field(
        default=SecretStr(""), description="OAuth client secret (never logged)."
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Broker, limiter and caches."
    )
    database_url: str = Field(
        default="sqlite:///presence.sqlite3", description="Audit database (SQLAlchemy URL)."
    )
    rate_limit_per_minute: int = Field(
        default=300, ge=1, description="The OAuth client's Genesys request budget per minute."
    )
    rate_limit_headroom: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of the budget left unused (for other tools on the same client).",
    )
    limiter_max_inline_wait_s: float = Field(
        default=5.0, gt=0, description="Longer budget waits re-schedule the task instead."
    )
    ack_timeout_s: float = Field(
        default=5.0, gt=0, description="How long to wait for the confirming socket event."
    )
    http_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of every Genesys call.")
    max_retries: int = Field(default=8, ge=0, description="Retries before dead_letter.")
    retry_backoff_s: float = Field(default=2.0, gt=0, description="First retry delay.")
    retry_backoff_max_s: float = Field(default=300.0, gt=0, description="Longest retry delay.")
    agent_lock_ttl_s: float = Field(default=60.0, gt=0, description="Per-agent lock lifetime.")
    transition_matrix_file: Path | None = Field(
        default=None, description="TOML file overriding the default transition matrix."
    )
    channel_slots: int = Field(
        default=16, ge=0, le=20, description="Notification channels this client may hold."
    )
    state_cache_ttl_s: int = Field(
        default=3600, ge=1, description="How long an agent's cached presence is trusted."
    )
    notification_heartbeat_s: float = Field(
        default=30.0, gt=0, description="Expected heartbeat interval of the notification socket."
    )
    task_events: bool = Field(
        default=False,
        description="Send Celery task events (Flower's live task view needs them; off saves CPU).",
    )
    notification_prime_agents: int = Field(
        default=3000,
        ge=0,
        le=20_000,
        description="Agents each process subscribes to and caches at start, over as many "
        "channels as they need (0 = subscribe lazily).",
    )
    org_task_share: int = Field(
        default=4,
        ge=1,
        description="With several orgs: the most tasks of one org a threads worker process runs "
        "at once, so that one org's burst leaves threads and CPU to the others' updates (1 "
        "while the org's queue holds more than two minutes of its budget).",
    )
    notification_channels: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Channels one process may hold (1,000 agents each), within CHANNEL_SLOTS.",
    )
    notification_prime_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="How long tasks of a fresh process wait for its priming before subscribing "
        "or reading agents.",
    )
    presence_source: str = Field(
        default="PURECLOUD",
        pattern=r"^(?i:purecloud)$|^[0-9A-Za-z][0-9A-Za-z-]{0,63}$",
        description="Presence source written: PURECLOUD or the id of a registered source.",
    )
    channel_extend_after_s: float = Field(
        default=20 * 3600.0, gt=0, description="Re-subscribe (extending the 24 h channel) after."
    )
    max_request_age_s: float = Field(
        default=6 * 3600.0, gt=0, description="A request still waiting after this is dead-lettered."
    )
    requested_at_max_skew_s: float = Field(
        default=300.0,
        ge=0,
        description="A request whose `requested_at` is further in the future than this is "
        "invalid (clock skew allowed between producers and workers).",
    )
    broker_visibility_timeout_s: int = Field(
        default=600,
        ge=60,
        description="The backstop for a message held by a worker that died (another worker "
        "normally restores it within about 20 s, once the dead one's liveness key expires); it "
        "must exceed the task time limit (300 s). Retries wait in the broker ledger, not in a "
        "worker, so no retry delay counts here.",
    )
    broker_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="A retry that Redis cannot take is written again for this long before its "
        "message is handed back for redelivery.",
    )
    runtime_retry_s: float = Field(
        default=30.0,
        gt=0,
        description="A message a worker cannot start its update flow for (a configuration "
        "error, Redis down at start) is retried after this.",
    )
    ledger_check_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A queued presence message not yet held by a worker is looked up after "
        "this; one a killed worker took from the queue and never held is enqueued again.",
    )
    schedule_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="How often each worker publishes the retries that are due and checks the "
        "ledger.",
    )
    capacity_min_on_queue: int = Field(
        default=1, ge=0, description="Agents that must stay on queue in every queue."
    )
    capacity_max_waiting_per_agent: float = Field(
        default=5.0, gt=0, description="Most waiting interactions per remaining on-queue agent."
    )
    capacity_overrides_file: Path | None = Field(
        default=None, description='TOML file with per-queue policies ([queues."<id>"]).'
    )
    capacity_observation_ttl_s: float = Field(
        default=5.0, ge=0.001, description="How long a queue observation is shared before re-query."
    )
    capacity_membership_ttl_s: int = Field(
        default=600, ge=1, description="How long an agent's joined queues are cached."
    )
    capacity_reservation_grace_s: float = Field(
        default=10.0, ge=0, description="Reservations outlive their observation by this much."
    )
    capacity_defer_max_s: float = Field(
        default=900.0, gt=0, description="Longest a deferred change waits for room (policy defer)."
    )
    wfm_webhook_url: str | None = Field(
        default=None, description="WFM endpoint receiving change events; unset = no WFM sync."
    )
    wfm_webhook_secret: SecretStr = Field(
        default=SecretStr(""), description="HMAC-SHA256 key signing WFM events (never logged)."
    )
    wfm_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one WFM delivery.")
    wfm_max_retries: int = Field(default=10, ge=0, description="WFM retries before failed.")
    wfm_retry_backoff_s: float = Field(default=2.0, gt=0, description="First WFM retry delay.")
    wfm_retry_backoff_max_s: float = Field(
        default=300.0, gt=0, description="Longest WFM retry delay."
    )
    wfm_sweep_after_s: float = Field(
        default=60.0, gt=0, description="Pending deliveries untouched this long are re-sent."
    )
    wfm_sweep_interval_s: float = Field(
        default=30.0, gt=0, description="How often celery beat runs the WFM sweeper."
    )
    bulk_batch_size: int = Field(
        default=50,
        ge=1,
        le=50,
        description="Agents per bulk presence PUT (the platform's maximum is 50).",
    )
    wave_task_agents: int = Field(
        default=WAVE_MAX_AGENTS,
        ge=1,
        le=WAVE_MAX_AGENTS,
        description="Agents per wave task: one notification subscription call covers them all "
        "(at most 1,000, a channel's topic limit).",
    )
    shift_dispatch_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often celery beat dispatches due shift changes (the most a change "
        "starts late; each run is one indexed query).",
    )
    shift_stale_after_s: float = Field(
        default=900.0,
        gt=0,
        description="Shift changes found later than this past their due time are skipped, not applied.",
    )
    shift_redispatch_after_s: float = Field(
        default=900.0,
        gt=0,
        description="Dispatched shift changes with no audit row after this are sent again "
        "(a dispatcher stopped between claiming and sending).",
    )
    sentry_dsn: SecretStr | None = Field(default=None, description="Sentry DSN; unset = off.")
    sentry_environment: str = Field(
        default="production", description="Sentry `environment` tag of the worker's events."
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve Prometheus metrics on this port from the worker's main process "
        "(all pool processes' with PROMETHEUS_MULTIPROC_DIR); unset = off.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Interface the metrics exporters bind (METRICS_PORT and `presence metrics`); "
        "0.0.0.0 for every interface, e.g. in a container.",
    )

    preflight_on_start: bool = Field(
        default=True,
        description="A worker runs the `presence doctor` checks before consuming and refuses "
        "to start on a fatal failure (one log line each).",
    )
    preflight_reuse_s: float = Field(
        default=600.0,
        ge=0,
        description="A starting worker skips the Genesys checks (and their API requests) when "
        "another worker passed every check with the same settings this recently; 0: every "
        "worker checks.",
    )

    @model_validator(mode="after")
    def _check_region(self) -> Settings:
        region = self.genesys_region
        if self.genesys_api_url is None and region is not None and region not in REGION_DOMAINS:
            known = ", ".join(sorted(REGION_DOMAINS))
            # The variable, never its value: a settings error must not echo what was typed.
            raise ValueError(f"GENESYS_REGION is not a known region; use one of {known}")
        return self

    @property
    def api_base(self) -> str:
        """REST base URL; raises ValueError when neither region nor URL is configured."""
        if self.genesys_api_url:
            return self.genesys_api_url.rstrip("/")
        if self.genesys_region:
            return f"https://api.{REGION_DOMAINS[self.genesys_region]}"
        raise ValueError("Set GENESYS_REGION (e.g. us_east_1) or GENESYS_API_URL")

    @property
    def login_base(self) -> str:
        """Token host: ``api.`` becomes ``login.``; any other host serves its own /oauth/token."""
        base = self.api_base
        return base.replace("//api.", "//login.", 1) if "//api." in base else base

    @property
    def effective_rate_per_minute(self) -> int:
        return max(1, int(self.rate_limit_per_minute * (1.0 - self.rate_limit_headroom)))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def settings_markdown() -> str:
    """The settings reference table for the README, generated from this class."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            shown = "(empty)" if not default.get_secret_value() else "(set)"
        elif default is None:
            shown = "unset"
        elif default == "":
            shown = "(empty)"
        else:
            shown = f"`{default}`"
        lines.append(f"| `{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines)
