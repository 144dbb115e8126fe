"""tinyvit's own errors: the user's mistakes, which every command prints as one line.

A `TinyvitError` says what the user asked for or gave that cannot work (a flag, a file, a config,
a dataset, a run directory), names it, and says the fix. Anything else that goes wrong (a bug here,
in torch, in a library) is not one, and the commands let it show its traceback.
"""


class TinyvitError(ValueError):
    """A mistake in what the user asked for or gave; the message is one line that names it. A
    ValueError, so that library callers catching ValueError keep working."""


class MissingFileError(TinyvitError, FileNotFoundError):
    """A file or folder the user named that is not there."""
