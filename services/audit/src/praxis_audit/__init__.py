"""The audit service: the events stream, kept for years and queryable."""
