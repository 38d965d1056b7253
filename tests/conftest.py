"""Shared pytest set-up: the real servers live in their own plugin modules."""

pytest_plugins = ["postgres_fixtures", "hub_fixtures", "servers"]
