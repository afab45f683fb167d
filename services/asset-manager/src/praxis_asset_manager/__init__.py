"""Asset-manager service: inventory and leased reservations."""
