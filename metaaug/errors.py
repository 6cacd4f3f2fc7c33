"""The one exception type for bad input.

Every user-facing failure (bad data, bad params, bad policy file, unreachable
tracking server) raises :class:`MetaaugError` with a single line that names the
offending file/param and what is expected; the CLI turns it into that line on
stderr and exit code 2, never a traceback.
"""


class MetaaugError(Exception):
    """Bad input: the message is one line naming what is wrong and what is expected."""
