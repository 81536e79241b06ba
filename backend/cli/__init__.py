"""The `taskring` command line: the entry point and the user-facing applications."""
