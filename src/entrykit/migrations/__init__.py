"""Migrations: the Alembic runner and the replica locks that make them run once."""
