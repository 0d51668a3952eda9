"""Routing: finds the competent authority for (service, place) and dispatches the case to its back office."""
