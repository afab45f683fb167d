"""Praxis service plumbing shared by every service (written once, imported everywhere)."""
