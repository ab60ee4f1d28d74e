"""The one exception type for problems a user can cause and fix."""


class FinloraError(Exception):
    """A user-fixable problem: bad input, missing file, impossible setting.

    The message is a single line that names the problem and the fix; the CLI prints it
    and exits with code 2 instead of showing a traceback.
    """
