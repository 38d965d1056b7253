"""The Hugging Face Hub: HTTP client, ranged parts, cache layout, lock file, progress, prefetch."""
