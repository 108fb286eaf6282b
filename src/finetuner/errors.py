"""The one exception type that reaches users as a clean message instead of a traceback."""


class FinetunerError(Exception):
    """A problem with the user's input or environment: the message says what, where and
    what is valid. The CLI prints it and exits with status 2."""


class BadItem(FinetunerError):
    """One item of the data (an image, a mesh, a media URL) that cannot be used: missing,
    too big, corrupt or refused. The message names the item, what is wrong and what is
    valid; readers prefix it with the data file, line and column. A training loader skips
    such items and counts them instead of stopping."""
