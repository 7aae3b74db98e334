-- The alerts of candidate rule settings (`framewatch tasks try`), beside the live alerts and never published: the
-- same columns as alerts, the namespace first in every key as since 0006. image_key is the frame's own key (no
-- copy is made): the image is gone once retention deletes the frame. Expired with the alerts.
CREATE TABLE shadow_alerts (
    namespace    text        NOT NULL,
    alert_id     uuid        NOT NULL,
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
    evidence     jsonb       NOT NULL,
    rule_version text,
    detector     text,
    model        text,
    PRIMARY KEY (namespace, alert_id)
);
-- a task's candidate's alerts over a span (`framewatch tasks diff`)
CREATE INDEX shadow_alerts_namespace_task_time ON shadow_alerts (namespace, task_id, captured_at);
