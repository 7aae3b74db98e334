"""Bridges from the alert feed to other systems, deployed apart from the stream like the detectors: `mqtt`
(Frigate / Home Assistant style topics, camera availability retained) and `webhook` (signed HTTP POSTs). Each reads
`mq_topic` with `read_committed` in a consumer group of its own and commits a message (an alert, or an alert's
clip) only once it was delivered: at least once, with `kind` and `alert_id` to deduplicate on (`feed`)."""
