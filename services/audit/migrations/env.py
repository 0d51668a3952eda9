"""Alembic environment of the audit service (run by ``python -m services.audit migrate`` and at start-up)."""

from alembic import context

from shared.db import run_migrations_online

run_migrations_online(context.config)
