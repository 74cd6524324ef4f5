"""The one exception type that user-facing code turns into a one-line error message."""


class UserError(ValueError):
    """Bad input from the user: an unknown model name, an impossible argument, a malformed file, ..."""
