"""Alembic's environment for the example service.

Run by entrykit, ``config.attributes["connection"]`` holds an open connection to the database
entrykit was given (and ``sqlalchemy.url`` its URL, driver postgresql+psycopg or mysql+pymysql):
use it, or entrykit reports that the migration went to another database. Run by the alembic
CLI, the URL comes from ``sqlalchemy.url`` or, when that is empty, from DATABASE_URL.
"""

from __future__ import annotations

import os
import re
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlalchemy.engine import Connection

config = context.config

# Alembic's own logging set-up. Under entrykit this keeps entrykit's log format: entrykit
# keeps its handlers and loggers working across this call.
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

# The app talks to the database with plain psycopg and keeps no SQLAlchemy models, so there is
# no metadata for autogenerate; point this at your models' MetaData if you have them.
target_metadata = None


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL", "")
    if not url:
        raise RuntimeError("set DATABASE_URL (or sqlalchemy.url in alembic.ini)")
    # postgres:// and postgresql:// mean psycopg 3 here, mysql:// PyMySQL, as for entrykit
    url = re.sub(r"^postgres(?:ql)?(?:\+psycopg2?)?://", "postgresql+psycopg://", url)
    return re.sub(r"^(?:mysql|mariadb)(?:\+\w+)?://", "mysql+pymysql://", url)


def run_migrations_offline() -> None:
    """`entrykit migrate --sql` / `alembic upgrade head --sql`: print the SQL."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # Given by entrykit (or any program calling alembic.command with a connection).
    if (connection := config.attributes.get("connection")) is not None:
        return do_run_migrations(connection)
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = database_url()
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
