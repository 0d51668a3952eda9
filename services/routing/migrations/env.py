"""Alembic environment of the routing service (run by ``python -m services.routing migrate`` and at start-up)."""

from alembic import context

from shared.db import run_migrations_online

run_migrations_online(context.config)
