"""Retention: every ended frame's object deleted soon after its outcome (`frames`), and the leader's periodic sweep of
what slipped through plus the maximum age of alert rows and images (`housekeeping`)."""
