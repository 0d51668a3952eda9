"""Intake: the HTTP API for portals and citizens' offices; accepts applications and answers status queries."""
