-- Alerts, keyed by their deterministic id: a replay inserts nothing twice.
CREATE TABLE alerts (
    alert_id     uuid        PRIMARY KEY,
    frame_id     uuid        NOT NULL,
    task_id      text        NOT NULL,
    camera_id    text        NOT NULL,
    task_type    text        NOT NULL,
    rule         text        NOT NULL,
    captured_at  timestamptz NOT NULL,
    emitted_at   timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    bucket       text        NOT NULL,
    image_key    text        NOT NULL,
    evidence     jsonb       NOT NULL
);
CREATE INDEX alerts_camera_time ON alerts (camera_id, captured_at DESC);
CREATE INDEX alerts_task_type_time ON alerts (task_type, captured_at DESC);
CREATE INDEX alerts_captured_at ON alerts (captured_at DESC);
