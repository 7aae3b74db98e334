-- What raised each alert: the version of its task's rule settings (a short hash, rules/versions.py), the id of the
-- algorithm service whose detections it came from and the model that service reported. Null in rows stored before
-- this migration, and for a service that reports no model. Workers older than it write rows without them.
ALTER TABLE alerts ADD COLUMN rule_version text, ADD COLUMN detector text, ADD COLUMN model text;
