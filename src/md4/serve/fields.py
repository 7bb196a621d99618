"""A request's JSON fields, each checked against its range or choices; a bad one is refused in one sentence that
names the field, what it must be and what it was."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


class RequestError(ValueError):
    """A request md4 serve refuses, with the HTTP status to answer it with (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Fields:
    """The JSON object of a request, read one checked field at a time."""

    def __init__(self, body: Any):
        if not isinstance(body, dict):
            raise RequestError("The request must be a JSON object of the form's fields; reload the page.")
        self.body = body

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int:
        value = self.body.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise RequestError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
        return value

    def number(
        self, name: str, low: float, high: float, default: float | None = None, above_low: bool = False
    ) -> float:
        value = self.body.get(name, default)
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        if not (low < number if above_low else low <= number) or not number <= high:  # also NaN
            bounds = f"above {low:g} and at most {high:g}" if above_low else f"from {low:g} to {high:g}"
            raise RequestError(f"{name} must be a number {bounds}, got {value!r}.")
        return float(number)

    def choice(self, name: str, options: Collection[str], default: str | None = None) -> str:
        value = self.body.get(name, default)
        if value not in options:
            raise RequestError(f"{name} must be one of {', '.join(options)}, got {value!r}.")
        return value

    def text(self, name: str, max_chars: int, default: str = "") -> str:
        value = self.body.get(name, default)
        if not isinstance(value, str):
            raise RequestError(f"{name} must be text, got {type(value).__name__}.")
        if len(value) > max_chars:
            raise RequestError(f"{name} is {len(value)} characters long; this server takes at most {max_chars}.")
        return value
