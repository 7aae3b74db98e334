"""Stateful analysis of detections: tracking, the nine task types, incidents and alerts (pure computation)."""
