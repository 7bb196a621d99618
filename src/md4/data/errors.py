"""The error raised for bad data input: missing, empty or malformed corpora and tokens."""


class DataError(ValueError):
    """Bad data input; the message says in one sentence what is wrong and how to fix it."""
