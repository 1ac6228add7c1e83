"""The errors a user can fix: shown as one clear line by the command line, never a trace."""

from __future__ import annotations

from pac.cache.errors import CacheCorruptError, CacheSpaceError
from pac.data.errors import DataError
from pac.families import FamilyError
from pac.techniques.base import TechniqueError

USER_ERRORS: tuple[type[BaseException], ...] = (
    CacheCorruptError,
    CacheSpaceError,
    DataError,
    FamilyError,
    TechniqueError,
    FileNotFoundError,
    ValueError,
)
