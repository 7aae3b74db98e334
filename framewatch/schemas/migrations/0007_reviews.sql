-- An operator's verdict on an alert: 'true' (it happened), 'false' (a false positive) or just 'reviewed'. One row
-- per alert: a new verdict replaces the one before, with who gave it and when. It goes with its alert (expiry).
CREATE TABLE alert_reviews (
    namespace    text        NOT NULL,
    alert_id     uuid        NOT NULL,
    verdict      text        NOT NULL CHECK (verdict IN ('true', 'false', 'reviewed')),
    reviewer     text        NOT NULL,
    reviewed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, alert_id),
    FOREIGN KEY (namespace, alert_id) REFERENCES alerts (namespace, alert_id) ON DELETE CASCADE
);

-- What an operator saw happen that the rules did not alert on: a camera, a rule, the time it happened on the
-- camera's clock (`captured_at`, as an alert's frame). Named like the alerts' columns, so one filter fits both.
CREATE TABLE missed_events (
    namespace    text        NOT NULL,
    event_id     uuid        NOT NULL,
    camera_id    text        NOT NULL,
    task_type    text        NOT NULL,
    rule         text        NOT NULL,
    captured_at  timestamptz NOT NULL,
    note         text        NOT NULL DEFAULT '',
    reporter     text        NOT NULL,
    reported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, event_id)
);
CREATE INDEX missed_events_namespace_camera_time ON missed_events (namespace, camera_id, captured_at DESC);
