"""What an attacker may have left in a compromised mailbox, and what the service does about each.

The investigate step reads the mailbox's inbox rules (hidden ones included), its forwarding,
who else holds rights on it, the account's sign-in methods and its app consents; these pure
functions turn what was read into :class:`Finding` values with the reasons a person can check.
Containment then acts only on what the service may judge alone (suspicious inbox rules and
external forwarding); a new sign-in method, a delegate or an app with mail access is for a
person to judge, so such a finding stops the case for approval before the unblock.

The judgement follows Microsoft's guidance for a compromised mailbox and its alert playbooks
for suspicious inbox rules and illicit consent grants (sources in the README's fidelity table).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from service.domain.states import StepName
from service.domain.tenant import (
    AuthMethod,
    Forwarding,
    InboxRule,
    MailboxPermission,
    OAuthGrant,
    RecipientPermission,
    ServicePrincipal,
)


class Containment(StrEnum):
    """``UNBLOCK_CONTAINMENT``: what the service does about what it finds."""

    enforce = "enforce"  # disable suspicious rules, clear external forwarding; stop for a person on the rest
    report = "report"  # record findings, change nothing at the mailbox; still stop for a person
    off = "off"  # no investigation


class FindingKind(StrEnum):
    inbox_rule = "inbox_rule"
    forwarding = "forwarding"
    mailbox_permission = "mailbox_permission"
    auth_method = "auth_method"
    oauth_grant = "oauth_grant"


class FindingAction(StrEnum):
    """What was, or will be, done about a finding."""

    none = "none"  # nothing suspicious
    disable = "disable"  # a suspicious rule containment will disable
    disabled = "disabled"  # disabled, and read back disabled
    clear = "clear"  # external forwarding containment will clear
    cleared = "cleared"  # cleared, and read back cleared
    reported = "reported"  # suspicious, left in place (containment set to report, or not asked for this case)
    review = "review"  # for a person to judge: the case stops for approval before the unblock


#: Kinds a person must judge: the service never removes them itself.
REVIEW_KINDS = frozenset({FindingKind.mailbox_permission, FindingKind.auth_method, FindingKind.oauth_grant})

#: Folders where a rule hides mail from its owner (Microsoft's playbook for inbox manipulation rules).
HIDING_FOLDERS = frozenset({"rss feeds", "rss subscriptions", "conversation history", "archive", "junk email"})

#: Words attackers make rules trigger on (business e-mail compromise: invoices and payments).
TRIGGER_WORDS = frozenset(
    {"invoice", "payment", "wire", "transfer", "bank", "remittance", "payroll", "iban", "swift", "w-2", "w2"}
)

#: Delegated scopes that read, send or change a user's mail (Microsoft Graph and Exchange Online).
MAIL_SCOPES = frozenset(
    {
        "mail.read",
        "mail.readbasic",
        "mail.readwrite",
        "mail.read.shared",
        "mail.readwrite.shared",
        "mail.send",
        "mail.send.shared",
        "mailboxsettings.readwrite",
        "imap.accessasuser.all",
        "pop.accessasuser.all",
        "smtp.send",
        "ews.accessasuser.all",
        "full_access_as_user",
        "exchangewebservices.accessasuser.all",
    }
)

#: How recent a sign-in method must be to have been added by whoever held the account.
RECENT_METHOD = timedelta(days=7)

#: Microsoft's own tenant: apps it publishes (Outlook, Teams...) are owned by it.
MICROSOFT_TENANT_ID = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    key: str  # what it is about (the rule's identity, the method's id...), to update it later
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    suspicious: bool = False
    reasons: tuple[str, ...] = ()
    action: FindingAction = FindingAction.none

    def as_dict(self) -> dict[str, Any]:
        """The finding in the case document (``findings`` items)."""
        return {
            "kind": self.kind.value,
            "key": self.key,
            "summary": self.summary,
            "details": dict(self.details),
            "suspicious": self.suspicious,
            "reasons": list(self.reasons),
            "action": self.action.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            kind=FindingKind(data["kind"]),
            key=str(data["key"]),
            summary=str(data["summary"]),
            details=dict(data.get("details") or {}),
            suspicious=bool(data.get("suspicious")),
            reasons=tuple(str(r) for r in data.get("reasons") or ()),
            action=FindingAction(data.get("action") or FindingAction.none),
        )


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].strip().lower() if "@" in address else ""


def external(addresses: Iterable[str], domains: Sequence[str]) -> list[str]:
    """The addresses outside the tenant's accepted domains (an address without a domain is not judged)."""
    inside = {d.lower() for d in domains}
    return [a for a in addresses if _domain(a) and _domain(a) not in inside]


def _words(rule: InboxRule) -> list[str]:
    said = " ".join((*rule.subject_contains, *rule.subject_or_body_contains, *rule.body_contains)).lower()
    return sorted(word for word in TRIGGER_WORDS if word in said)


def judge_rule(rule: InboxRule, domains: Sequence[str]) -> Finding:
    """A rule is suspicious when it sends mail out of the tenant, destroys it, hides it or marks it read."""
    reasons: list[str] = []
    outside = external((*rule.forward_to, *rule.forward_as_attachment_to, *rule.redirect_to), domains)
    if outside:
        reasons.append(f"sends mail outside the tenant to {', '.join(outside)}")
    if rule.delete_message or rule.soft_delete_message:
        reasons.append("deletes the messages it matches")
    if rule.move_to_folder and rule.move_to_folder.rsplit("\\", 1)[-1].strip().lower() in HIDING_FOLDERS:
        reasons.append(f"moves the messages it matches to {rule.move_to_folder}, out of sight")
    if rule.mark_as_read:
        reasons.append("marks the messages it matches as read")
    words = _words(rule)
    if words:
        reasons.append(f"triggers on {', '.join(words)}")
    if rule.hidden and reasons:
        reasons.append("is hidden from Outlook's rule list")
    # What the rule was when it was read: its "enabled" may change once containment runs (details say).
    marks = [m for m, on in (("hidden", rule.hidden), ("was already disabled", not rule.enabled)) if on]
    return Finding(
        kind=FindingKind.inbox_rule,
        key=rule.identity,
        summary=f'inbox rule "{rule.name}"' + (f" ({', '.join(marks)})" if marks else ""),
        details={
            "identity": rule.identity,
            "name": rule.name,
            "enabled": rule.enabled,
            "hidden": rule.hidden,
            "forward_to": list(rule.forward_to),
            "forward_as_attachment_to": list(rule.forward_as_attachment_to),
            "redirect_to": list(rule.redirect_to),
            "delete_message": rule.delete_message,
            "move_to_folder": rule.move_to_folder,
            "mark_as_read": rule.mark_as_read,
            "trigger_words": words,
        },
        suspicious=bool(reasons),
        reasons=tuple(reasons),
    )


def judge_forwarding(forwarding: Forwarding, domains: Sequence[str]) -> Finding | None:
    """Mailbox-level forwarding to an address outside the tenant; None when the mailbox does not forward."""
    if not forwarding.smtp_address and not forwarding.address:
        return None
    reasons: list[str] = []
    if forwarding.smtp_address and external([forwarding.smtp_address], domains):
        reasons.append(f"forwards all mail outside the tenant to {forwarding.smtp_address}")
    if forwarding.address_smtp and external([forwarding.address_smtp], domains):
        reasons.append(f"forwards all mail to {forwarding.address}, whose address {forwarding.address_smtp} is outside")
    if reasons and not forwarding.deliver_and_forward:
        reasons.append("keeps no copy in the mailbox")
    target = forwarding.smtp_address or forwarding.address or ""
    return Finding(
        kind=FindingKind.forwarding,
        key="mailbox-forwarding",
        summary=f"mailbox forwarding to {target}",
        details={
            "forwarding_smtp_address": forwarding.smtp_address,
            "forwarding_address": forwarding.address,
            "deliver_to_mailbox_and_forward": forwarding.deliver_and_forward,
        },
        suspicious=bool(reasons),
        reasons=tuple(reasons),
    )


_SELF = {"nt authority\\self", "s-1-5-10"}


def judge_mailbox_permission(permission: MailboxPermission, owner: str) -> Finding | None:
    """Full access granted to someone else: a delegate a person must confirm."""
    user = permission.user.strip()
    if permission.inherited or permission.deny or user.lower() in _SELF or user.lower() == owner.lower():
        return None
    rights = [r for r in permission.rights if r.lower() == "fullaccess"]
    if not rights:
        return None
    return Finding(
        kind=FindingKind.mailbox_permission,
        key=f"FullAccess:{user}",
        summary=f"{user} has full access to the mailbox",
        details={"user": user, "access_rights": list(permission.rights)},
        suspicious=True,
        reasons=("another principal can read all of this mailbox's mail",),
    )


def judge_send_as(permission: RecipientPermission, owner: str) -> Finding | None:
    """Send As granted to someone else."""
    trustee = permission.trustee.strip()
    if (
        permission.inherited
        or permission.access_control_type.lower() != "allow"
        or trustee.lower() in _SELF
        or trustee.lower() == owner.lower()
    ):
        return None
    if not any(r.lower() == "sendas" for r in permission.rights):
        return None
    return Finding(
        kind=FindingKind.mailbox_permission,
        key=f"SendAs:{trustee}",
        summary=f"{trustee} can send as the mailbox",
        details={"trustee": trustee, "access_rights": list(permission.rights)},
        suspicious=True,
        reasons=("another principal can send mail as this user",),
    )


def judge_auth_method(method: AuthMethod, now: datetime) -> Finding | None:
    """A sign-in method registered recently may be the attacker's way back in.

    Graph publishes when a method was registered only for some kinds (the Authenticator app,
    FIDO2 keys, Windows Hello, temporary access passes...); phone numbers and e-mail addresses
    have no such date, so they are not judged. The password is not a finding.
    """
    if method.kind == "password" or method.created_at is None:
        return None
    age = now - method.created_at
    if age > RECENT_METHOD:
        return None
    days = max(age.total_seconds() / 86400, 0)
    label = method.display_name or method.kind
    return Finding(
        kind=FindingKind.auth_method,
        key=method.id,
        summary=f"{method.kind} sign-in method {label!r} registered {days:.1f} days ago",
        details={
            "id": method.id,
            "type": method.odata_type,
            "display_name": method.display_name,
            "created_at": method.created_at.isoformat(),
            **method.detail,
        },
        suspicious=True,
        reasons=(f"registered within the last {RECENT_METHOD.days} days",),
    )


def judge_grant(grant: OAuthGrant, app: ServicePrincipal | None) -> Finding | None:
    """A delegated consent that lets an app read, send or change the user's mail."""
    mail = sorted(s for s in grant.scopes if s.lower() in MAIL_SCOPES)
    if not mail:
        return None
    first_party = app is not None and app.owner_tenant_id == MICROSOFT_TENANT_ID
    if first_party:
        return None
    name = app.display_name if app is not None else grant.client_id
    reasons = [f"the app has delegated {', '.join(mail)}"]
    if app is None or not app.verified_publisher:
        reasons.append("its publisher is not verified")
    return Finding(
        kind=FindingKind.oauth_grant,
        key=grant.id,
        summary=f"app {name!r} can use the mailbox ({', '.join(mail)})",
        details={
            "grant_id": grant.id,
            "client_id": grant.client_id,
            "app_id": app.app_id if app else None,
            "app_name": app.display_name if app else None,
            "publisher": app.publisher_name if app else None,
            "verified_publisher": app.verified_publisher if app else None,
            "consent_type": grant.consent_type,
            "scopes": list(grant.scopes),
        },
        suspicious=True,
        reasons=tuple(reasons),
    )


@dataclass(frozen=True, slots=True)
class ContainmentPlan:
    """What this case may change at the mailbox (the policy and the case's own actions)."""

    disable_rules: bool
    clear_forwarding: bool


def with_actions(findings: Iterable[Finding], plan: ContainmentPlan) -> tuple[Finding, ...]:
    """What will be done about each finding, before containment runs."""
    out: list[Finding] = []
    for finding in findings:
        if not finding.suspicious:
            action = FindingAction.none
        elif finding.kind in REVIEW_KINDS:
            action = FindingAction.review
        elif finding.kind is FindingKind.inbox_rule:
            if not finding.details.get("enabled", True):
                action = FindingAction.none  # already off: it does nothing
            else:
                action = FindingAction.disable if plan.disable_rules else FindingAction.reported
        else:
            action = FindingAction.clear if plan.clear_forwarding else FindingAction.reported
        out.append(replace(finding, action=action))
    return tuple(out)


def needs_review(findings: Iterable[Finding]) -> list[Finding]:
    """The findings a person must judge before the unblock."""
    return [f for f in findings if f.action is FindingAction.review]


def merged(existing: Iterable[Finding], updated: Iterable[Finding]) -> tuple[Finding, ...]:
    """The case's findings with ``updated`` replacing those of the same kind and key (new ones appended)."""
    fresh = {(f.kind, f.key): f for f in updated}
    out = [fresh.pop((f.kind, f.key), f) for f in existing]
    return (*out, *fresh.values())


#: The containment steps, each with the kind of finding it acts on and what it does to it.
CONTAINMENT_WORK: dict[StepName, tuple[FindingKind, FindingAction]] = {
    StepName.disable_inbox_rules: (FindingKind.inbox_rule, FindingAction.disable),
    StepName.remove_forwarding: (FindingKind.forwarding, FindingAction.clear),
}


def to_contain(step: StepName, findings: Iterable[Finding]) -> list[Finding]:
    """What the containment ``step`` is to act on among ``findings`` (none: the step has nothing to do)."""
    kind, action = CONTAINMENT_WORK[step]
    return [f for f in findings if f.kind is kind and f.action is action]
