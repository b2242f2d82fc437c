"""The temporary password's life after it is sealed: who may have it, and when it is gone.

A reveal hands the password out once; afterwards, or once its time-to-live has passed, it is
destroyed. These rules decide, from what is known about the case and its credential, whether a
reveal succeeds, why it does not, or whether asking found it already expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.domain.audit import Actor
from service.domain.states import TERMINAL_STATES, CaseState
from service.domain.timeline import CaseChange, credential_expired, credential_revealed
from service.errors import CredentialGone, CredentialNotFound, CredentialNotReady


@dataclass(frozen=True, slots=True)
class CredentialView:
    """What is known about a case's temporary password (never the password itself)."""

    applied: bool  # the reset that set it went through
    expires_at: datetime | None
    revealed_at: datetime | None
    revealed_by: str | None
    destroyed_at: datetime | None
    destroyed_reason: str | None

    @property
    def available(self) -> bool:
        return self.applied and self.revealed_at is None and self.destroyed_at is None

    def due_to_expire(self, now: datetime) -> bool:
        return self.available and self.expires_at is not None and self.expires_at <= now


def reveal(
    *, state: CaseState, reset_asked: bool, credential: CredentialView | None, actor: Actor, now: datetime
) -> CaseChange:
    """A reveal of the password: refused with the reason, or the change that hands it out.

    Asked for after its time-to-live, the change destroys it instead (the caller answers 410
    once that is written, so the password is gone whichever way the request ends).
    """
    if credential is None or not credential.applied:
        if state not in TERMINAL_STATES and reset_asked:
            raise CredentialNotReady("the password reset has not run yet; ask again once the case has passed it")
        raise CredentialNotFound("this case has no temporary password (no reset was asked for, or it failed)")
    if credential.revealed_at is not None:
        raise CredentialGone(f"the temporary password was already revealed at {credential.revealed_at.isoformat()}")
    if credential.destroyed_at is not None:
        raise CredentialGone("the temporary password was destroyed unrevealed (it expired)")
    if credential.due_to_expire(now):
        return credential_expired(state=state)
    return credential_revealed(state=state, actor=actor)
