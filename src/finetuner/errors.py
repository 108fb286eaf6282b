"""The one exception type that reaches users as a clean message instead of a traceback."""


class FinetunerError(Exception):
    """A problem with the user's input or environment: the message says what, where and
    what is valid. The CLI prints it and exits with status 2."""
