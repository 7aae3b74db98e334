-- Deployments of different namespaces may share this database: each row belongs to the namespace of the worker
-- that wrote it (rows written before this migration, and by workers older than it: ''). Ids are unique only within
-- a namespace: two namespaces fed the same frames make the same alert ids, and counting tasks of the same id the
-- same (task, minute). So the namespace leads every key, and every index a worker's queries and expiry use.
-- Workers older than this migration name the former keys in ON CONFLICT: their writes fail and are retried until
-- they are replaced (nothing is lost).
ALTER TABLE alerts ADD COLUMN namespace text NOT NULL DEFAULT '';
ALTER TABLE counts ADD COLUMN namespace text NOT NULL DEFAULT '';
ALTER TABLE alert_clips ADD COLUMN namespace text NOT NULL DEFAULT '';

ALTER TABLE alerts DROP CONSTRAINT alerts_pkey, ADD PRIMARY KEY (namespace, alert_id);
ALTER TABLE counts DROP CONSTRAINT counts_pkey, ADD PRIMARY KEY (namespace, task_id, window_start);
ALTER TABLE alert_clips DROP CONSTRAINT alert_clips_pkey, ADD PRIMARY KEY (namespace, alert_id);

-- a page of the API (newest first, optionally by camera or task type) and expiry (the oldest) within a namespace
DROP INDEX alerts_camera_time, alerts_task_type_time, alerts_captured_at, alert_clips_made_at;
CREATE INDEX alerts_namespace_time ON alerts (namespace, captured_at DESC);
CREATE INDEX alerts_namespace_camera_time ON alerts (namespace, camera_id, captured_at DESC);
CREATE INDEX alerts_namespace_task_type_time ON alerts (namespace, task_type, captured_at DESC);
CREATE INDEX alert_clips_namespace_made_at ON alert_clips (namespace, made_at);
-- alerts_frame_images and alert_clips_key stay as they are: the sweep asks about objects of a bucket, which
-- namespaces may share, so it looks at every namespace's rows
