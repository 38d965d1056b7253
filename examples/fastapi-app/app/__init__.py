"""entrykit's example service: a FastAPI app and a worker that share one database."""
