-- Alert expiry also deletes the clip rows of alerts never stored (the sink refused them) once they are as old as
-- an expired alert: found by when they were made.
CREATE INDEX alert_clips_made_at ON alert_clips (made_at);
