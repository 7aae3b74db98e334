-- Each alert's clip once its extractor has cut it, or why there is none. A table of its own: the clip may be
-- announced before its alert is stored, and several alerts may share one clip.
CREATE TABLE alert_clips (
    alert_id    uuid        PRIMARY KEY,
    bucket      text        NOT NULL,
    clip_key    text,
    start_at    timestamptz,
    end_at      timestamptz,
    clip_bytes  bigint,
    reason      text,
    made_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_clips_key ON alert_clips (clip_key) WHERE clip_key IS NOT NULL;
