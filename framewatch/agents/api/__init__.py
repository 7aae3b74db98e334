"""The worker's HTTP surface: the dashboard, /metrics and the /api/… query API (`web`)."""
