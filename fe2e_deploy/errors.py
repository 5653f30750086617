"""The errors a user can fix, as one type: :class:`UserError`.

The command line prints a :class:`UserError` as one line ``error: ...`` and exits with 2; any other
exception is a bug and keeps its traceback. (So do the system's own ``OSError``s, those with an
``errno``: a full disk or a refused permission is the user's to fix, and says which file.)

Each subclass also derives from the built-in exception its case has always been, so code that
catches ``ValueError`` or ``FileNotFoundError`` around a library call keeps working:

- :class:`InvalidInput` (``ValueError``): an option out of range, a file whose contents are wrong;
- :class:`MissingInput` (``FileNotFoundError``): a file or folder that is not there;
- :class:`OutputExists` (``FileExistsError``): an output that would be replaced without ``--overwrite``;
- :class:`NotAFolder` / :class:`NotAFile` (``NotADirectoryError`` / ``IsADirectoryError``);
- :class:`ImageError` (an :class:`InvalidInput`): one image cannot be processed (unreadable, a size the
  engine was not built for, too many pixels, maps with NaN): runs over many images skip it and go on.

Pure Python: the command line imports it before anything heavy.
"""

from __future__ import annotations

import errno as errno_codes


class UserError(Exception):
    """An error the user can fix (a bad file, option, output path or machine); the message says how."""


class InvalidInput(UserError, ValueError):
    """An option value or a file's contents that cannot be used."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder that should exist does not."""


class OutputExists(UserError, FileExistsError):
    """An output exists and would be replaced (pass ``--overwrite``), or something else is in its way."""


class NotAFolder(UserError, NotADirectoryError):
    """A file where a folder is needed."""


class NotAFile(UserError, IsADirectoryError):
    """A folder where a file is needed."""


class ImageError(InvalidInput):
    """One image cannot be processed; commands that run over many images report it and go on."""


def is_user_error(exc: BaseException) -> bool:
    """A :class:`UserError`, or an ``OSError`` raised by the system (it has an errno: disk full, no permission)."""
    return isinstance(exc, UserError) or (isinstance(exc, OSError) and exc.errno is not None)


#: System error numbers and what the user can do about them (appended to the system's message).
OS_HINTS = {
    errno_codes.EEXIST: " (something is in the way: choose another path)",
    errno_codes.ENOSPC: " (free some disk space, or write elsewhere)",
    errno_codes.EACCES: " (no permission: choose another location)",
    errno_codes.EPERM: " (no permission: choose another location)",
    errno_codes.EROFS: " (read-only file system: choose another location)",
    errno_codes.EISDIR: " (a folder is in the way: give a file path)",
    errno_codes.ENOTDIR: " (a file is in the way: give a folder path)",
}


def describe(exc: BaseException) -> str:
    """One line for a user error; a system error names the file and says what the system said."""
    if isinstance(exc, OSError) and exc.strerror:  # raised by the system (library errors carry a message only)
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}{OS_HINTS.get(exc.errno, '')}"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__
