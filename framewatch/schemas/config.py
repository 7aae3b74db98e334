"""The configuration model: the seed system's config.toml loads as it is; new keys get names of their own.

Environment variables override addresses and secrets (see ENV_OVERRIDES), so a file can be shared without them.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from framewatch.errors import BadInput
from framewatch.schemas.tasks import (
    CameraTask,
    Freshness,
    TaskType,
    TaskTypes,
    is_file_source,
)


class ConfigError(BadInput):
    """A config file could not be read or holds a value framewatch cannot use; the message names file and key."""


class Section(BaseModel):
    """A config section: unknown keys are kept aside to be reported once, never silently used."""

    model_config = ConfigDict(extra="allow", frozen=True)
    obsolete: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _drop_obsolete(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in cls.obsolete}
        return data


BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class MinioSettings(Section):
    endpoint: str = "127.0.0.1:9000"
    bucket: str = "images"
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    use_ssl: bool = False
    base_path: str = ""
    region: str = "us-east-1"
    # where browsers and integrators reach the store, when not at `endpoint` (a container network's name):
    # presigned URLs name this host, e.g. "localhost:9000" for compose on a laptop
    public_endpoint: str = ""

    @field_validator("base_path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not BUCKET_NAME.fullmatch(value) or ".." in value:
            raise ValueError(f"{value!r} is not an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-', "
                             "starting and ending with a letter or digit")
        return value


class FrameExtractorSettings(Section):
    obsolete = {"output_dir": "frames go to the object store only"}

    enable: bool = True
    interval_ms: int = Field(default=1000, gt=0)
    store: str = "minio"
    task_types: TaskTypes = list(TaskType)
    max_frame_count: int = Field(default=0, ge=0, description="frames kept per task; 0 keeps any number")
    max_frame_age_sec: int = Field(default=86400, ge=0, description="no frame object lives longer; 0: no limit")
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    realtime: bool = Field(default=True, description="pace file sources at their own frame rate, like a camera")
    open_timeout_sec: float = Field(default=10.0, gt=0, description="connecting to a source gives up after this")
    read_timeout_sec: float = Field(default=10.0, gt=0, description="a source silent this long is reconnected")
    reconnect_min_sec: float = Field(default=1.0, gt=0, description="first wait before reconnecting; doubles")
    reconnect_max_sec: float = Field(default=30.0, gt=0, description="the longest wait between reconnects")
    upload_concurrency: int = Field(default=16, ge=1, description="uploads in flight at once, all cameras")
    handoff_size: int = Field(default=4, ge=1, description="samples waiting for upload per camera; oldest dropped")
    max_throttle: float = Field(default=10.0, ge=1, description="most a camera's interval stretches under pressure")
    clip_buffer_mb: int = Field(default=256, ge=1, description="encoded packets held for event clips, all cameras "
                                "together (each camera an equal share, at most 64 MB)")
    snapshot_interval_sec: float = Field(default=5.0, ge=0, description="how often each camera's latest frame is "
                                         "copied to its still (snapshots/), for the dashboard; 0: no stills")
    minio: MinioSettings = MinioSettings()
    tasks: list[CameraTask] = []

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value != "minio":
            raise ValueError(f"store {value!r} is not supported; framewatch stores frames in an S3 store ('minio')")
        return value

    @field_validator("snapshot_interval_sec")
    @classmethod
    def _snapshot_interval(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("0 (no stills) or at least 1 second: a still is a glance, not a video stream")
        return value

    @model_validator(mode="after")
    def _unique_tasks(self) -> FrameExtractorSettings:
        ids = [t.id for t in self.tasks]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"task ids must be unique; repeated: {', '.join(duplicates)}")
        return self

    def frame_limit(self, task: CameraTask | None) -> int:
        """The task's max_frame_count, else the section's; 0 means no limit."""
        return task.max_frame_count if task is not None and task.max_frame_count is not None else self.max_frame_count

    def interval_for(self, task: CameraTask) -> int:
        return task.interval_ms or self.interval_ms

    def freshness_for(self, task: CameraTask) -> Freshness:
        """The task's own, else every frame for a file read as fast as it decodes, else the freshest."""
        if task.freshness is not None:
            return task.freshness
        return Freshness.ALL if is_file_source(task.rtsp_url) and not self.realtime else Freshness.LATEST


class StaticService(Section):
    """An algorithm service declared in config instead of announcing itself on fw.services; it never expires."""

    id: str
    endpoint: str
    task_types: TaskTypes = list(TaskType)
    capacity: int = Field(default=1, ge=1)
    max_batch: int = Field(default=1, ge=1)


class AiAnalysisSettings(Section):
    obsolete = {"scan_interval_sec": "frames arrive as events on fw.frames; nothing scans the store"}

    enable: bool = True
    mq_type: str = "kafka"
    mq_address: str = "127.0.0.1:9092"
    mq_topic: str = "easyai.alerts"
    heartbeat_timeout_sec: float = Field(default=60.0, gt=0)
    max_concurrent_infer: int = Field(default=8, ge=1)
    max_queue_size: int = Field(default=50000, ge=1)
    save_only_with_detection: bool = True
    alert_base_path: str = "alerts"
    alert_batch_enabled: bool = True
    alert_batch_size: int = Field(default=100, ge=1)
    alert_batch_interval_sec: float = Field(default=2.0, gt=0)
    infer_timeout_sec: float = Field(default=10.0, gt=0)
    presign_expiry_sec: int = Field(default=24 * 3600, gt=0, le=7 * 24 * 3600)
    max_frame_age_ms: int = Field(default=2000, gt=0, description="older frames are dropped, never inferred")
    batch_wait_ms: int = Field(default=20, ge=0, description="how long a batch may wait to fill up")
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open a breaker")
    breaker_error_rate: float = Field(default=0.5, gt=0, le=1, description="error rate over 20 requests that opens it")
    breaker_open_sec: float = Field(default=2.0, gt=0, description="first open period; doubled per failed probe")
    services: list[StaticService] = []
    service_endpoints: list[str] = Field(default=[], description="patterns (shell-style: http://10.0.0.*:8500) an "
                                         "announced service's endpoint must match; empty: any")
    alert_max_age_days: float = Field(default=30, ge=0, description="alert rows and images older go; 0: keep all")
    sweep_interval_sec: float = Field(default=3600, gt=0, description="how often the reconciliation sweep runs")

    @field_validator("mq_type")
    @classmethod
    def _kafka(cls, value: str) -> str:
        if value != "kafka":
            raise ValueError(f"mq_type {value!r} is not supported; framewatch publishes alerts to Kafka")
        return value

    @field_validator("alert_base_path")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value.strip("/") or "alerts"


class DatabaseSettings(Section):
    dsn: SecretStr = SecretStr("postgresql://framewatch@127.0.0.1:5432/framewatch")


# what a review records as its reviewer with the single `api_token`, and with no token at all
SINGLE_TOKEN_NAME = "api"
ANONYMOUS = "anonymous"
RESERVED_TOKEN_NAMES = (SINGLE_TOKEN_NAME, ANONYMOUS)


class FramewatchSettings(Section):
    """Keys the seed system did not have."""

    namespace: str = Field(default="", description="prefix for topics, consumer groups and the app id")
    kafka_bootstrap: str | None = Field(default=None, description="defaults to ai_analysis.mq_address")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = Field(default="", description="CA bundle for SSL/SASL_SSL; the system's when empty")
    topic_partitions: int = Field(default=4, ge=1, description="partitions of every topic but fw.tasks: at most "
                                  "this many workers share the work")
    task_partitions: int = Field(default=16, ge=1, description="partitions of fw.tasks: at most this many extractors "
                                 "share the cameras")
    replication_factor: int = Field(default=1, ge=1, description="copies of every topic and table changelog "
                                    "(3 on a production cluster)")
    producer_request_timeout_sec: float = Field(
        default=1200.0, gt=0, description="how long the worker's producer tries to deliver a record before it reports "
        "it failed; the worker then sends it again, and the record it came from stays unacked meanwhile")
    min_insync_replicas: int | None = Field(default=None, ge=1, description="copies a write needs before it is "
                                            "acknowledged (every producer uses acks=all); the broker's when unset")
    bind_host: str = Field(default="127.0.0.1", description="where HTTP endpoints listen; 0.0.0.0 in containers")
    worker_web_port: int = 6066
    extractor_metrics_port: int = 9464
    data_dir: str = Field(default="", description="Faust table state; a temporary folder per worker when empty")
    api_token: SecretStr = Field(default=SecretStr(""), description="when set, /api/* wants 'Authorization: Bearer …'")
    api_tokens: dict[str, SecretStr] = Field(default={}, description="named tokens, name = token: each is let in "
                                             "like api_token, and a review records its name")

    @field_validator("api_tokens")
    @classmethod
    def _token_names(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, token in value.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}", name) or name in RESERVED_TOKEN_NAMES:
                raise ValueError(f"{name!r}: a name is letters, digits, '_.@-', at most 64 characters, not "
                                 f"{' or '.join(RESERVED_TOKEN_NAMES)}")
            if not token.get_secret_value():
                raise ValueError(f"{name}: the token is empty")
        if len({t.get_secret_value() for t in value.values()}) < len(value):
            raise ValueError("two names share a token: a review could not tell who gave it")
        return value

    @model_validator(mode="after")
    def _kafka_credentials(self) -> FramewatchSettings:
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise ValueError(f"kafka_security_protocol {self.kafka_security_protocol} needs kafka_sasl_username "
                             "(and kafka_sasl_password, or FRAMEWATCH_KAFKA_SASL_PASSWORD)")
        return self

    @model_validator(mode="after")
    def _replicas(self) -> FramewatchSettings:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas ({self.min_insync_replicas}) cannot exceed replication_factor "
                             f"({self.replication_factor}): no write could ever be acknowledged")
        return self

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z0-9][a-z0-9\-]{0,30}", value):
            raise ValueError("must be lower-case letters, digits and '-', at most 31 characters")
        return value


class Config(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    frame_extractor: FrameExtractorSettings = FrameExtractorSettings()
    ai_analysis: AiAnalysisSettings = AiAnalysisSettings()
    database: DatabaseSettings = DatabaseSettings()
    framewatch: FramewatchSettings = FramewatchSettings()

    @property
    def kafka_bootstrap(self) -> str:
        return self.framewatch.kafka_bootstrap or self.ai_analysis.mq_address

    def topic(self, name: str) -> str:
        """A framewatch topic's name in this config's namespace (the alert topic for users is not prefixed)."""
        return f"{self.framewatch.namespace}.{name}" if self.framewatch.namespace else name

    @property
    def worker_group(self) -> str:
        """The workers' consumer group, the Faust app's id: its committed offsets say what the agents have done."""
        return f"{self.framewatch.namespace}-framewatch" if self.framewatch.namespace else "framewatch"

    def task(self, task_id: str) -> CameraTask:
        for task in self.frame_extractor.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)


# variable -> (section, key): addresses and secrets that deployments inject rather than write down
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "FRAMEWATCH_KAFKA_BOOTSTRAP": ("framewatch", "kafka_bootstrap"),
    "FRAMEWATCH_KAFKA_SASL_USERNAME": ("framewatch", "kafka_sasl_username"),
    "FRAMEWATCH_KAFKA_SASL_PASSWORD": ("framewatch", "kafka_sasl_password"),
    "FRAMEWATCH_MQ_TOPIC": ("ai_analysis", "mq_topic"),
    "FRAMEWATCH_MINIO_ENDPOINT": ("frame_extractor", "minio", "endpoint"),
    "FRAMEWATCH_MINIO_ACCESS_KEY": ("frame_extractor", "minio", "access_key"),
    "FRAMEWATCH_MINIO_SECRET_KEY": ("frame_extractor", "minio", "secret_key"),
    "FRAMEWATCH_MINIO_BUCKET": ("frame_extractor", "minio", "bucket"),
    "FRAMEWATCH_MINIO_PUBLIC_ENDPOINT": ("frame_extractor", "minio", "public_endpoint"),
    "FRAMEWATCH_POSTGRES_DSN": ("database", "dsn"),
    "FRAMEWATCH_NAMESPACE": ("framewatch", "namespace"),
    "FRAMEWATCH_BIND_HOST": ("framewatch", "bind_host"),
    "FRAMEWATCH_WORKER_PORT": ("framewatch", "worker_web_port"),
    "FRAMEWATCH_EXTRACTOR_METRICS_PORT": ("framewatch", "extractor_metrics_port"),
    "FRAMEWATCH_API_TOKEN": ("framewatch", "api_token"),
}


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> None:
    for variable, path in ENV_OVERRIDES.items():
        if variable not in environ:
            continue
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = environ[variable]


def _ignored_keys(raw: dict[str, Any]) -> list[str]:
    """Keys present in the file that framewatch does not use: obsolete ones with the reason, unknown ones."""
    notes: list[str] = []

    def walk(model: type[BaseModel], data: Any, where: str) -> None:
        if not isinstance(data, dict):
            return
        obsolete = getattr(model, "obsolete", {})
        for key, value in data.items():
            name = f"{where}.{key}" if where else key
            if key in obsolete:
                notes.append(f"{name}: ignored, {obsolete[key]}")
            elif key not in model.model_fields:
                notes.append(f"{name}: unknown key, ignored")
            else:
                annotation = model.model_fields[key].annotation
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    walk(annotation, value, name)
                elif key == "tasks" and isinstance(value, list):
                    for index, item in enumerate(value):
                        walk(CameraTask, item, f"{name}[{index}]")

    walk(Config, raw, "")
    return notes


def _describe(error: ValidationError, raw: dict[str, Any]) -> str:
    """One line per problem, naming the key; a list item with an `id` (a task, a service) is named by it too."""
    lines = []
    for problem in error.errors():
        parts: list[str] = []
        node: Any = raw
        for loc in problem["loc"]:
            node = node[loc] if _has(node, loc) else None
            if isinstance(loc, int):
                named = f" (id {node['id']!r})" if isinstance(node, dict) and "id" in node else ""
                parts[-1] = f"{parts[-1]}[{loc}]{named}"
            else:
                parts.append(str(loc))
        key = ".".join(parts) or "(top level)"
        lines.append(f"{key}: {problem['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def _has(node: Any, loc: str | int) -> bool:
    if isinstance(node, dict):
        return loc in node
    return isinstance(node, list) and isinstance(loc, int) and 0 <= loc < len(node)


def load_config(path: str | Path | None, environ: dict[str, str] | None = None) -> tuple[Config, list[str]]:
    """Read, override from the environment, validate. Returns the config and the keys it ignored."""
    environ = dict(os.environ) if environ is None else environ
    raw: dict[str, Any] = {}
    source = "(defaults)"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source}: not valid TOML: {error}") from None
    ignored = _ignored_keys(raw)
    _apply_env(raw, environ)
    try:
        return Config.model_validate(raw), ignored
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error, raw)}") from None


# the user info up to the last '@' that is followed by a host (a password may hold '@' or '/')
_URL_CREDENTIALS = re.compile(r"(?<=://)\S*@(?=[^@\s/?#]+(?:[/?#]|$))")
_SECRET_PARAMETER = re.compile(r"(?i)([?&;](?:password|passwd|pass|pwd|secret|token|access_token|key)=)[^&;#\s]*")
_DSN_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def mask_url(url: str) -> str:
    """rtsp://user:pass@host/... -> rtsp://***@host/..., for logs, metrics labels and answers; also secrets in
    query parameters (?password=…) and in key=value DSNs (password=…)."""
    if "://" not in url:
        return _DSN_PASSWORD.sub(r"\1***", url)
    return _SECRET_PARAMETER.sub(r"\1***", _URL_CREDENTIALS.sub("***@", url))


def masked(config: Config) -> dict[str, Any]:
    """The resolved config for display: secrets shown as '***', credentials cut out of URLs."""
    data = config.model_dump(mode="json")
    data["database"]["dsn"] = mask_url(config.database.dsn.get_secret_value())
    data["frame_extractor"]["minio"]["secret_key"] = "***" if config.frame_extractor.minio.secret_key else ""
    for task in data["frame_extractor"]["tasks"]:
        task["rtsp_url"] = mask_url(task["rtsp_url"])
    return data
