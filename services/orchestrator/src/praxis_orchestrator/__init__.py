"""Orchestrator service: runs protocols on one workcell against live PyLabRobot objects."""
