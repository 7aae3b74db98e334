"""The worker's HTTP surface: the dashboard, /metrics and the /api/… query API. One module per resource
(`public`, `worker`, `alerts`, `cameras`, `counts`) lists its routes; `web` puts them on the app."""
