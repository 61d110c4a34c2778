"""The error raised when a data set's files are missing or unreadable."""


class DataError(ValueError):
    """A data set's file is missing or corrupt; the message names the file, where it was expected, and how to get it."""
