"""Alembic environment of the notify service (run by ``python -m services.notify migrate`` and at start-up)."""

from alembic import context

from shared.db import run_migrations_online

run_migrations_online(context.config)
