-- The alerts whose image stayed under frames/ (their copy failed): the sweep asks which frames such rows point at
-- and keeps those. Partial: every other alert's image is under the alert base, and costs this index nothing.
CREATE INDEX alerts_frame_images ON alerts (image_key) WHERE image_key LIKE '%frames/%';
