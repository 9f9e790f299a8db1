"""Exception types of the package."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class PuzzleError(ValueError):
    """Bad puzzle input: a missing, malformed, unsafe or inconsistent file.

    ``path`` names the offending file or folder (None where no single file is at fault).
    The message always says which file and what is wrong with it.
    """

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot be used here; the message says why."""
