"""Gateway service: the HTTP API."""
