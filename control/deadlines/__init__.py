"""Earliest-deadline-first release of held jobs (docs/deadlines.md)."""
