"""The one exception an API handler raises to answer an error: code and message."""

from __future__ import annotations


class ApiFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
