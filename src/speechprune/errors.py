"""The one exception type for bad user input; the CLI turns it into a one-line error, exit 2."""


class UserError(Exception):
    """A problem with what the user gave us (a file, a line, a value), not a bug.

    The message must name the culprit (path, line, option) in one line.
    """
