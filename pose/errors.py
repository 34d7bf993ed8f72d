"""The one base class of the mistakes a user can fix (a missing file, a wrong format, an impossible
setting): the command line prints such an error as its one-line message and exits with
`exit_code`; any other exception is a bug and shows its traceback."""


class UserError(Exception):
    """A problem the user can fix. The message is one line: what (the file, the setting), what is
    wrong, and the fix."""

    exit_code = 2  # the command line's exit status
