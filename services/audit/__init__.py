"""Audit: keeps an append-only, tamper-evident hash chain of every event on the backbone (SPEC §1, §5, §7)."""
