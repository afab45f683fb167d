"""Scheduler service: run records, reservation and dispatch, outcomes."""
