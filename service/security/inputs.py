"""Validating what callers send before it goes anywhere near a tenant.

A mailbox must be one plain SMTP address: ASCII, no quoting, comments, whitespace, wildcards or
PowerShell metacharacters, within RFC length limits, with a domain the service may act on.
Values are bound as parameters (never script text), so this is defence in depth, and it gives
a service desk a clear 422 instead of a case that fails three steps later.
"""

from __future__ import annotations

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

from service.errors import ForeignMailbox, InvalidMailbox

MAX_ADDRESS = 254
MAX_LOCAL = 64
# What Exchange and Entra accept in a UPN/SMTP local part, minus anything with meaning to a shell.
_LOCAL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._+'-]{0,62}[A-Za-z0-9_'+-])?$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def normalize_mailbox(value: object) -> str:
    """The canonical lower-case address, or InvalidMailbox saying what is wrong with it."""
    if not isinstance(value, str):
        raise InvalidMailbox("mailbox must be a string")
    if value != value.strip():
        raise InvalidMailbox("mailbox must not start or end with whitespace")
    if not value:
        raise InvalidMailbox("mailbox must not be empty")
    if len(value) > MAX_ADDRESS:
        raise InvalidMailbox(f"mailbox must be at most {MAX_ADDRESS} characters")
    if not value.isascii():
        raise InvalidMailbox("mailbox must be plain ASCII (no look-alike or international characters)")
    if unicodedata.normalize("NFKC", value) != value or not value.isprintable():
        raise InvalidMailbox("mailbox contains control or non-printable characters")
    if value.count("@") != 1:
        raise InvalidMailbox("mailbox must be one address of the form name@domain")
    local, domain = value.split("@")
    if len(local) > MAX_LOCAL:
        raise InvalidMailbox(f"the part before @ must be at most {MAX_LOCAL} characters")
    if not _LOCAL.match(local) or ".." in local:
        raise InvalidMailbox("the part before @ may contain only letters, digits and . _ + ' -")
    if not _DOMAIN.match(domain.lower()):
        raise InvalidMailbox("the domain is not a valid DNS name")
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False, allow_quoted_local=False)
    except EmailNotValidError as error:
        raise InvalidMailbox(f"not a valid address: {error}") from None
    return str(checked.normalized).lower()


def check_domain(mailbox: str, allowed: list[str] | tuple[str, ...]) -> None:
    domain = mailbox.rsplit("@", 1)[1]
    allowed_set = {d.lower() for d in allowed}
    if domain not in allowed_set:
        raise ForeignMailbox(
            f"{domain} is not one of the domains this service may act on ({', '.join(sorted(allowed_set))})",
            domain=domain,
        )
