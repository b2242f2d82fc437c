"""Temporary passwords that Entra ID accepts.

Entra ID wants 8 to 256 characters with at least three of: lower case, upper case, digits,
symbols. We generate 20 characters with all four classes from an alphabet without look-alike
characters (the password is read off a screen and typed by a person), using the caller's
cryptographic random source.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable

LOWER = "abcdefghijkmnpqrstuvwxyz"
UPPER = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DIGITS = "23456789"
SYMBOLS = "!#%+-=?@^_"
_CLASSES = (LOWER, UPPER, DIGITS, SYMBOLS)
_ALL = "".join(_CLASSES)

DEFAULT_LENGTH = 20


def generate_password(length: int = DEFAULT_LENGTH, *, randbelow: Callable[[int], int] = secrets.randbelow) -> str:
    if length < 8 or length > 256:
        raise ValueError("Entra ID passwords are 8 to 256 characters long")
    chars = [cls[randbelow(len(cls))] for cls in _CLASSES]
    chars += [_ALL[randbelow(len(_ALL))] for _ in range(length - len(chars))]
    for i in range(len(chars) - 1, 0, -1):  # Fisher-Yates with the same random source
        j = randbelow(i + 1)
        chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def meets_entra_complexity(password: str) -> bool:
    """Entra ID's rule: 8-256 characters, three of four character classes, no spaces at ends."""
    if not 8 <= len(password) <= 256 or password != password.strip():
        return False
    classes = (
        any(c in string.ascii_lowercase for c in password),
        any(c in string.ascii_uppercase for c in password),
        any(c in string.digits for c in password),
        any(not c.isalnum() for c in password),
    )
    return sum(classes) >= 3
