"""Unit tier: pure code and local files, no servers; `make test-fast` runs it."""
