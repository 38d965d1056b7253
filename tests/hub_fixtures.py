"""A local Hugging Face Hub on 127.0.0.1 for the tests, with fault injection."""
