"""PostgreSQL: versioned migrations, the idempotent alert store (a batch COPYed, or, when it holds an alert already
stored, one INSERT of unnested column arrays merged by alert id), the per-minute counts, and the queries behind
the API, the operators' reviews and missed events; all of it within one namespace (deployments of several may
share the database)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import asyncpg
import orjson

from framewatch.errors import BadInput, Unreachable
from framewatch.schemas.events import AlertEvent, ClipReady, CountWindow
from framewatch.schemas.config import Config
from framewatch.schemas.queries import AlertQuery, CountQuery, MissedQuery, PrecisionQuery, TimeRangeQuery, Verdict
from framewatch.schemas.tasks import TaskType

log = logging.getLogger("framewatch.database")

MIGRATION_LOCK = 0x6677_6D69  # pg advisory lock id: one migrator at a time

ALERT_COLUMNS = ("namespace", "alert_id", "frame_id", "task_id", "camera_id", "task_type", "rule", "captured_at",
                 "emitted_at", "bucket", "image_key", "evidence", "rule_version", "detector", "model")


ALERTS = "alerts"
SHADOW_ALERTS = "shadow_alerts"  # candidates' alerts (`framewatch tasks try`): the same columns, never published


def merge_into(table: str) -> str:
    """One statement: the batch as one array per column, unnested, merged by (namespace, alert id)."""
    return (f"INSERT INTO {table} (" + ", ".join(ALERT_COLUMNS) + ") SELECT * FROM unnest("
            "$1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[], "
            "$9::timestamptz[], $10::text[], $11::text[], $12::jsonb[], $13::text[], $14::text[], $15::text[]) "
            "ON CONFLICT (namespace, alert_id) DO NOTHING")


MERGE = {table: merge_into(table) for table in (ALERTS, SHADOW_ALERTS)}


UPSERT_CLIP = ("INSERT INTO alert_clips (namespace, alert_id, bucket, clip_key, start_at, end_at, clip_bytes, "
               "reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (namespace, alert_id) DO UPDATE SET "
               "bucket = EXCLUDED.bucket, clip_key = EXCLUDED.clip_key, start_at = EXCLUDED.start_at, "
               "end_at = EXCLUDED.end_at, clip_bytes = EXCLUDED.clip_bytes, reason = EXCLUDED.reason, made_at = now() "
               "WHERE alert_clips.clip_key IS NULL AND EXCLUDED.clip_key IS NOT NULL")
UPSERT_COUNT = ("INSERT INTO counts (namespace, task_id, camera_id, task_type, window_start, window_sec, samples, "
                "people_max, people_mean, crossed_in, crossed_out) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
                "$11) ON CONFLICT (namespace, task_id, window_start) DO UPDATE SET samples = EXCLUDED.samples, "
                "people_max = EXCLUDED.people_max, people_mean = EXCLUDED.people_mean, "
                "crossed_in = EXCLUDED.crossed_in, crossed_out = EXCLUDED.crossed_out")
EXPIRE_ALERTS = ("DELETE FROM alerts WHERE namespace = $1 AND alert_id IN (SELECT alert_id FROM alerts "
                 "WHERE namespace = $1 AND captured_at < $2 LIMIT $3) RETURNING alert_id, task_id, image_key")
# the clip rows of the alerts expired, and those of alerts never stored (the sink refused them) made as long ago
EXPIRE_CLIPS = ("DELETE FROM alert_clips c WHERE c.namespace = $1 AND (c.alert_id = ANY($2::uuid[]) OR "
                "(c.made_at < $3 AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.namespace = c.namespace "
                "AND a.alert_id = c.alert_id))) RETURNING c.bucket, c.clip_key")
# candidates' alerts name no object of their own (their image is the frame's, gone with retention): rows only
EXPIRE_SHADOW = "DELETE FROM shadow_alerts WHERE namespace = $1 AND captured_at < $2"
# Which objects rows name is asked of a bucket, every namespace's rows: namespaces may share a bucket, and an object
# another namespace's alert keeps must outlive this one's expiry and sweep.
CLIPS_NAMED = "SELECT DISTINCT clip_key FROM alert_clips WHERE clip_key = ANY($2::text[]) AND bucket = $1"
IMAGES_NAMED = ("SELECT image_key FROM alerts WHERE image_key LIKE '%frames/%' "  # the partial index
                "AND image_key = ANY($2::text[]) AND bucket = $1")

# a verdict on each of these alerts of the namespace (ids it does not have are skipped), replacing any before
REVIEW = ("WITH reviewed AS (INSERT INTO alert_reviews (namespace, alert_id, verdict, reviewer) "
          "SELECT namespace, alert_id, $3::text, $4::text FROM alerts "
          "WHERE namespace = $1 AND alert_id = ANY($2::uuid[]) "
          "ON CONFLICT (namespace, alert_id) DO UPDATE SET verdict = EXCLUDED.verdict, "
          "reviewer = EXCLUDED.reviewer, reviewed_at = now() RETURNING *) "
          "SELECT r.alert_id, r.verdict, r.reviewer, r.reviewed_at, a.task_type FROM reviewed r "
          "JOIN alerts a ON a.namespace = r.namespace AND a.alert_id = r.alert_id")
ADD_MISSED = ("INSERT INTO missed_events (namespace, event_id, camera_id, task_type, rule, captured_at, note, "
              "reporter) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *")
# per camera and rule, of the alerts a filter (`{where}`) selects
ALERT_VERDICTS = ("SELECT camera_id, task_type, rule, count(*) AS alerts, count(r.verdict) AS reviewed, "
                  "count(*) FILTER (WHERE r.verdict = 'true') AS confirmed, "
                  "count(*) FILTER (WHERE r.verdict = 'false') AS \"false\" "
                  "FROM (SELECT * FROM alerts WHERE {where}) a "
                  "LEFT JOIN alert_reviews r ON r.namespace = a.namespace AND r.alert_id = a.alert_id "
                  "GROUP BY camera_id, task_type, rule")
MISSED_COUNTS = ("SELECT camera_id, task_type, rule, count(*) AS missed FROM missed_events WHERE {where} "
                 "GROUP BY camera_id, task_type, rule")
SPAN = "($3::timestamptz IS NULL OR captured_at >= $3) AND ($4::timestamptz IS NULL OR captured_at <= $4)"
# a task's alerts in a span of capture times (both ends included, as `replay --from-topic`), with their verdicts
TASK_VERDICTS = ("SELECT a.alert_id, a.rule, a.captured_at, r.verdict, r.reviewer FROM (SELECT * FROM alerts "
                 f"WHERE namespace = $1 AND task_id = $2 AND {SPAN}) a LEFT JOIN alert_reviews r "
                 "ON r.namespace = a.namespace AND r.alert_id = a.alert_id ORDER BY a.captured_at")
# a task's candidate's alerts (those of its version) in a span of capture times
TASK_SHADOW = ("SELECT alert_id, rule, captured_at FROM shadow_alerts WHERE namespace = $1 AND task_id = $2 AND "
               f"{SPAN} AND rule_version = $5 ORDER BY captured_at")
# a task's camera is named after it
TASK_MISSED = f"SELECT * FROM missed_events WHERE namespace = $1 AND camera_id = $2 AND {SPAN} ORDER BY captured_at"


def with_clips(alerts: str) -> str:
    """The rows of an alerts query, each with its clip's columns: `clip_answered` (whether an extractor has
    answered), `clip_key`, `clip_start_at`, `clip_end_at`, `clip_bytes`, `clip_reason`; and its review's:
    `verdict`, `reviewer`, `reviewed_at` (null when unreviewed). The query is joined as a subquery, so that only its
    rows (a page) are looked up in alert_clips and alert_reviews."""
    return ("SELECT a.*, c.alert_id IS NOT NULL AS clip_answered, c.clip_key, c.start_at AS clip_start_at, "
            "c.end_at AS clip_end_at, c.clip_bytes, c.reason AS clip_reason, r.verdict, r.reviewer, r.reviewed_at "
            f"FROM ({alerts}) a LEFT JOIN alert_clips c ON c.namespace = a.namespace AND c.alert_id = a.alert_id "
            "LEFT JOIN alert_reviews r ON r.namespace = a.namespace AND r.alert_id = a.alert_id")


class DatabaseUnavailable(Unreachable):
    """PostgreSQL could not be reached or could not run the statement now: worth retrying."""


class DataRejected(BadInput):
    """PostgreSQL refused the rows themselves (a data exception or a constraint): retrying cannot help."""


DATA_ERROR_CLASSES = ("22", "23")  # SQLSTATE classes: data exception, integrity constraint violation


def classified(error: Exception, what: str) -> Exception:
    """The error a failed write becomes: DataRejected for bad rows, DatabaseUnavailable for everything else."""
    if isinstance(error, asyncpg.PostgresError) and str(error.sqlstate or "")[:2] in DATA_ERROR_CLASSES:
        return DataRejected(f"{what} refused by PostgreSQL: {error}")
    return DatabaseUnavailable(f"{what} failed: {error}")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every file in schemas/migrations, in order."""
    found = []
    for entry in files("framewatch.schemas").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(connection: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet applied; returns their names."""
    applied: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await connection.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())""")
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with connection.transaction():
                await connection.execute(sql)
                await connection.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                         version, name)
            applied.append(name)
            log.info("applied migration %s", name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


def alert_row(namespace: str, alert: AlertEvent) -> tuple[object, ...]:
    frame = alert.frame
    return (namespace, alert.alert_id, frame.frame_id, frame.task_id, frame.camera_id, frame.task_type.value,
            alert.rule, _ts(frame.captured_at), _ts(alert.emitted_at), frame.bucket, alert.image_key,
            orjson.dumps(alert.evidence).decode(), alert.rule_version, alert.detector, alert.model)


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


COPY_MIN_ROWS = 10


async def _copy_or_merge(connection: asyncpg.Connection, rows: list[tuple[object, ...]], table: str) -> str:
    if len(rows) >= COPY_MIN_ROWS:
        try:
            status: str = await connection.copy_records_to_table(table, records=rows, columns=ALERT_COLUMNS)
            return status
        except asyncpg.UniqueViolationError:
            pass  # a replay: merged below
    merged: str = await connection.execute(MERGE[table], *zip(*rows, strict=True))
    return merged


async def _keep_session(_: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it is (asyncpg still rolls back a transaction left open): these
    sessions set nothing, listen to nothing and hold no advisory lock past a statement, and asyncpg's default reset
    (RESET ALL, UNLISTEN, …) is one more round trip per batch written."""


@dataclass(frozen=True)
class Expired:
    """A page of expired alerts: each one's (task_id, image_key), and the (bucket, clip_key) of every clip that no
    alert_clips row names any more."""

    images: list[tuple[str, str]]
    clips: list[tuple[str, str]]


class AlertStore:
    """The alerts, counts and clips of one namespace: it writes its rows with it, and reads, expires and answers
    only those (but which objects rows name is asked of every namespace, see CLIPS_NAMED)."""

    def __init__(self, dsn: str, namespace: str, pool_size: int = 4) -> None:
        self._dsn = dsn
        self.namespace = namespace
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    @classmethod
    def of(cls, config: Config) -> AlertStore:
        """The store of a config's database and namespace."""
        return cls(config.database.dsn.get_secret_value(), config.framewatch.namespace)

    async def connect(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_size, timeout=10,
                                                   command_timeout=30, reset=_keep_session)
        except (OSError, asyncpg.PostgresError) as error:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {error}") from None
        async with self.pool.acquire() as connection:
            await migrate(connection)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("alert store used before connect()")
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether PostgreSQL answers a query within `timeout_s` (readiness probes)."""
        try:
            async with asyncio.timeout(timeout_s), self.pool.acquire() as connection:
                await connection.fetchval("SELECT 1")
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailable):
            return False
        return True

    async def insert(self, alerts: list[AlertEvent], table: str = ALERTS) -> int:
        """Store a batch in one statement; alerts already stored are skipped. Returns how many were new.

        A batch of `COPY_MIN_ROWS` or more is COPYed first, the cheapest way in; one that holds an alert already
        stored (a replay after a crash, rare) fails as a whole on the primary key and is merged instead, skipping
        those alerts. A smaller batch is merged at once: a COPY first asks for the table's columns, a round trip
        that costs more than it saves on a few rows (`bench/sink.py`)."""
        rows = [alert_row(self.namespace, a) for a in alerts]
        try:
            async with self.pool.acquire() as connection:
                status = await _copy_or_merge(connection, rows, table)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise classified(error, f"storing {len(alerts)} alerts in {table}") from None
        return int(status.rsplit(" ", 1)[-1])

    async def insert_shadow(self, alerts: list[AlertEvent]) -> int:
        """`insert` into shadow_alerts: candidates' alerts, which nothing publishes."""
        return await self.insert(alerts, SHADOW_ALERTS)

    async def store_counts(self, windows: list[CountWindow]) -> int:
        """Upserts closed count minutes (a replayed one replaces itself); returns how many were written."""
        rows = [(self.namespace, w.task_id, w.camera_id, w.task_type.value, _ts(w.window_start), w.window_sec,
                 w.samples, w.people_max, w.people_mean, w.crossed_in, w.crossed_out) for w in windows]
        try:
            async with self.pool.acquire() as connection:
                await connection.executemany(UPSERT_COUNT, rows)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise classified(error, f"storing {len(windows)} count windows") from None
        return len(rows)

    async def store_clips(self, clips: list[ClipReady]) -> int:
        """Records each alert's clip, or why it has none; a clip replaces a former 'none' (an extractor that took
        the camera over may answer a request the one before did not), never the other way round."""
        rows = [(self.namespace, uuid.UUID(c.alert_id), c.bucket, c.clip_key,
                 None if c.start_at is None else _ts(c.start_at), None if c.end_at is None else _ts(c.end_at),
                 c.clip_bytes, c.reason) for c in clips]
        try:
            async with self.pool.acquire() as connection:
                await connection.executemany(UPSERT_CLIP, rows)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise classified(error, f"storing {len(clips)} clips") from None
        return len(rows)

    def _where(self, query: TimeRangeQuery) -> tuple[str, list[Any]]:
        """The query's SQL filter within this namespace, and its arguments."""
        where, args = query.where()
        return f"namespace = ${len(args) + 1} AND {where}", [*args, self.namespace]

    async def counts(self, query: CountQuery) -> list[asyncpg.Record]:
        where, args = self._where(query)
        return await self._fetch(f"SELECT * FROM counts WHERE {where} ORDER BY window_start DESC LIMIT {query.limit}",
                                 *args)

    async def query(self, query: AlertQuery) -> list[asyncpg.Record]:
        """A page of alerts with their clips (`with_clips`), newest first."""
        where, args = self._where(query)
        page = f"SELECT * FROM alerts WHERE {where} ORDER BY captured_at DESC, alert_id DESC LIMIT {query.limit}"
        return await self._fetch(with_clips(page) + " ORDER BY a.captured_at DESC, a.alert_id DESC", *args)

    async def get(self, alert_id: str) -> asyncpg.Record | None:
        """One alert with its clip (`with_clips`)."""
        rows = await self._fetch(with_clips("SELECT * FROM alerts WHERE namespace = $1 AND alert_id = $2"),
                                 self.namespace, uuid.UUID(alert_id))
        return rows[0] if rows else None

    async def expire(self, before: datetime, limit: int) -> Expired:
        """Deletes up to `limit` of this namespace's alerts captured before a time with their clip rows, the
        clip rows of its alerts never stored made before it, and its candidates' alerts captured before it, in one
        transaction. A clip another alert's row (of any
        namespace) still names in the same bucket is not returned."""
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                alerts = await connection.fetch(EXPIRE_ALERTS, self.namespace, before, limit)
                await connection.execute(EXPIRE_SHADOW, self.namespace, before)
                clips = {(r["bucket"], r["clip_key"]) for r in await connection.fetch(
                    EXPIRE_CLIPS, self.namespace, [r["alert_id"] for r in alerts], before) if r["clip_key"] is not None}
                named = set()
                for bucket in {bucket for bucket, _ in clips}:
                    keys = [key for of, key in clips if of == bucket]
                    named |= {(bucket, r["clip_key"]) for r in await connection.fetch(CLIPS_NAMED, bucket, keys)}
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise DatabaseUnavailable(f"expiring alerts failed: {error}") from None
        return Expired(images=[(r["task_id"], r["image_key"]) for r in alerts], clips=sorted(clips - named))

    async def clips_among(self, bucket: str, keys: list[str]) -> set[str]:
        """Which of these clip objects of a bucket alert_clips rows name."""
        return {r["clip_key"] for r in await self._fetch(CLIPS_NAMED, bucket, keys)}

    async def images_among(self, bucket: str, keys: list[str]) -> set[str]:
        """Which of these frame objects of a bucket alert rows keep as their image (an image that could not be
        copied)."""
        return {r["image_key"] for r in await self._fetch(IMAGES_NAMED, bucket, keys)}

    async def review(self, alert_ids: list[uuid.UUID], verdict: Verdict, reviewer: str) -> list[asyncpg.Record]:
        """Gives these alerts a verdict, replacing any before; returns a row per alert reviewed (those this
        namespace has): `alert_id`, `verdict`, `reviewer`, `reviewed_at`, `task_type`."""
        return await self._fetch(REVIEW, self.namespace, alert_ids, verdict.value, reviewer)

    async def add_missed(self, camera_id: str, task_type: TaskType, rule: str, captured_at: datetime, note: str,
                         reporter: str) -> asyncpg.Record:
        """Records an event the rules missed; returns its row."""
        rows = await self._fetch(ADD_MISSED, self.namespace, uuid.uuid4(), camera_id, task_type.value, rule,
                                 captured_at, note, reporter)
        return rows[0]

    async def missed(self, query: MissedQuery) -> list[asyncpg.Record]:
        where, args = self._where(query)
        return await self._fetch(f"SELECT * FROM missed_events WHERE {where} ORDER BY captured_at DESC "
                                 f"LIMIT {query.limit}", *args)

    async def precision(self, query: PrecisionQuery) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """Per camera and rule: the alerts' figures (`alerts`, `reviewed`, `confirmed`, `false`) and the missed
        events' (`missed`)."""
        where, args = self._where(query)
        return (await self._fetch(ALERT_VERDICTS.format(where=where), *args),
                await self._fetch(MISSED_COUNTS.format(where=where), *args))

    async def task_verdicts(self, task_id: str, since: datetime | None,
                            until: datetime | None) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """A task's alerts captured from `since` to `until` (both included) with their verdicts, oldest first, and
        the missed events of its camera in that span."""
        return (await self._fetch(TASK_VERDICTS, self.namespace, task_id, since, until),
                await self._fetch(TASK_MISSED, self.namespace, task_id, since, until))

    async def task_shadow(self, task_id: str, rule_version: str, since: datetime | None,
                          until: datetime | None) -> list[asyncpg.Record]:
        """A task's candidate's alerts (of that rule version) captured from `since` to `until`, oldest first:
        `alert_id`, `rule`, `captured_at`."""
        return await self._fetch(TASK_SHADOW, self.namespace, task_id, since, until, rule_version)

    async def cameras(self) -> list[asyncpg.Record]:
        return await self._fetch("SELECT camera_id, task_id, task_type, count(*) AS alerts, max(captured_at) AS "
                                 "last_alert_at FROM alerts WHERE namespace = $1 "
                                 "GROUP BY camera_id, task_id, task_type ORDER BY camera_id", self.namespace)

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        try:
            async with self.pool.acquire() as connection:
                rows: list[asyncpg.Record] = await connection.fetch(sql, *args)
                return rows
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise DatabaseUnavailable(f"query failed: {error}") from None
