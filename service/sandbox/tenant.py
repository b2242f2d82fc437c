"""The emulated tenants: users, the restricted-sender list, and the knobs tests turn.

The sandbox hosts several tenants (:class:`Tenants`, in order; the first is the default one):
the demo seed has contoso, as it always had, and fabrikam. Each :class:`Tenant` has its own
directory, restricted list, unblock history, faults and configuration (latency, denied
commands, Graph permissions...): a fault or a knob set on one tenant strikes only commands that
run against it. The call log is one for the whole sandbox: one sequence, each call naming the
tenant it ran against and the runspace it ran in.

State lives in memory behind one lock, shared by every tenant of a sandbox: the sandbox's event
loop mutates it while a test thread may read it. Nothing here speaks a protocol;
:mod:`service.sandbox.cmdlets` reads and writes it on behalf of remote commands and
:mod:`service.sandbox.control` exposes it as JSON.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

DEFAULT_DOMAIN = "contoso.com"
ONMICROSOFT_DOMAIN = "contoso.onmicrosoft.com"
TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
#: The object id of the Microsoft Graph service principal in the sandbox tenant (the resource of mail consents).
GRAPH_RESOURCE_ID = "00000000-6a00-4000-8000-000000000003"
FAULT_KINDS = ("transient", "throttled", "fatal", "drop_connection", "hang", "session_expired", "shell_lost")
FaultKind = Literal["transient", "throttled", "fatal", "drop_connection", "hang", "session_expired", "shell_lost"]
#: Faults that strike before the command is looked up: the runspace's session, or the whole shell, is gone.
SESSION_FAULTS: tuple[FaultKind, ...] = ("session_expired", "shell_lost")
COMMAND_FAULTS: tuple[FaultKind, ...] = tuple(k for k in FAULT_KINDS if k not in SESSION_FAULTS)  # type: ignore[misc]


#: Who the demo seed puts on contoso's restricted list, with the counts of its reason text.
DEMO_RESTRICTED: dict[str, tuple[int, int, str]] = {
    f"rob@{DEFAULT_DOMAIN}": (12, 480, "External"),
    f"laura@{DEFAULT_DOMAIN}": (1020, 3, "Internal"),
    f"julia@{DEFAULT_DOMAIN}": (40, 10400, "Total"),
    f"victor@{DEFAULT_DOMAIN}": (6, 730, "External"),
}

FABRIKAM_DOMAIN = "fabrikam.com"
FABRIKAM_ONMICROSOFT_DOMAIN = "fabrikam.onmicrosoft.com"
FABRIKAM_TENANT_ID = "2b7e151c-3a4d-4f6e-8c9a-5d0e1f2a3b4c"
#: Who the demo seed puts on fabrikam's restricted list (mia; noah is not restricted).
FABRIKAM_RESTRICTED: dict[str, tuple[int, int, str]] = {
    f"mia@{FABRIKAM_DOMAIN}": (8, 615, "External"),
}


@dataclass(frozen=True)
class TenantProfile:
    """Who a tenant is: its short name (the call log's and the control API's), its initial
    ``.onmicrosoft.com`` domain (Connect-ExchangeOnline -Organization), its tenant id
    (Connect-MgGraph -TenantId) and its accepted domains, the default first.

    ``object_base`` starts the tenant's object numbering (user object ids, method, app and grant
    ids), so that no two tenants' objects share an id, as no two directory objects do in Entra ID.
    """

    name: str
    initial_domain: str
    tenant_id: str
    accepted_domains: tuple[str, ...]
    object_base: int = 0


CONTOSO = TenantProfile("contoso", ONMICROSOFT_DOMAIN, TENANT_ID, (DEFAULT_DOMAIN, ONMICROSOFT_DOMAIN))
FABRIKAM = TenantProfile(
    "fabrikam",
    FABRIKAM_ONMICROSOFT_DOMAIN,
    FABRIKAM_TENANT_ID,
    (FABRIKAM_DOMAIN, FABRIKAM_ONMICROSOFT_DOMAIN),
    object_base=500_000,
)
#: The tenants each seed has, in order: the first is the default tenant (``UnblockRunner``, the
#: control API without ``?tenant=``).
SEED_TENANTS: dict[str, tuple[TenantProfile, ...]] = {"demo": (CONTOSO, FABRIKAM), "empty": (CONTOSO,)}


def now_utc() -> datetime:
    return datetime.now(UTC)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class InboxRule:
    """A server-side inbox rule. Recipients are SMTP addresses here; Get-InboxRule prints them as
    ``"Name" [SMTP:address]`` (or ``[EX:...]`` for a recipient of the directory)."""

    rule_id: str
    name: str
    enabled: bool = True
    forward_to: list[str] = field(default_factory=list)
    forward_as_attachment_to: list[str] = field(default_factory=list)
    redirect_to: list[str] = field(default_factory=list)
    delete_message: bool = False
    soft_delete_message: bool = False
    move_to_folder: str | None = None
    mark_as_read: bool = False
    subject_contains_words: list[str] = field(default_factory=list)
    subject_or_body_contains_words: list[str] = field(default_factory=list)
    body_contains_words: list[str] = field(default_factory=list)
    hidden: bool = False  # listed only by Get-InboxRule -IncludeHidden


#: What Add-MailboxPermission / a new mailbox leaves in Get-MailboxPermission for the owner itself.
SELF = "NT AUTHORITY\\SELF"


@dataclass
class MailboxPermission:
    user: str
    access_rights: list[str]
    inherited: bool = False
    deny: bool = False


@dataclass
class SendAs:
    trustee: str
    inherited: bool = False


@dataclass
class AuthMethod:
    """One sign-in method: its Graph type and the properties Graph gives that type (``fields``)."""

    method_id: str
    odata_type: str  # "#microsoft.graph.<kind>AuthenticationMethod"
    created: datetime | None = None  # createdDateTime, for the kinds that have one
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServicePrincipal:
    object_id: str
    display_name: str
    app_id: str
    owner_tenant_id: str | None = None
    verified_publisher: str | None = None  # the verified publisher's display name, if verified


@dataclass
class OAuthGrant:
    """A delegated permission grant; ``scope`` is Graph's one space-separated string."""

    grant_id: str
    client_id: str  # the client service principal's object id
    principal_id: str | None  # the user's object id (None for AllPrincipals)
    resource_id: str
    scope: str
    consent_type: str = "Principal"


@dataclass
class User:
    upn: str
    display_name: str
    on_premises_sync: bool = False
    has_mailbox: bool = True
    account_enabled: bool = True
    password_sha256: str | None = None
    password_changed_at: datetime | None = None
    force_change_password: bool = False
    sessions_revoked_at: datetime | None = None
    inbox_rules: list[InboxRule] = field(default_factory=list)
    forwarding_smtp_address: str | None = None
    deliver_to_mailbox_and_forward: bool = False
    object_id: str = ""
    client_side_rules: bool = False  # rules created in Outlook that a server-side change removes
    forwarding_address: str | None = None  # ForwardingAddress: a recipient of the directory
    mailbox_permissions: list[MailboxPermission] = field(
        default_factory=lambda: [MailboxPermission(SELF, ["FullAccess", "ReadPermission"])]
    )
    send_as: list[SendAs] = field(default_factory=lambda: [SendAs(SELF)])
    auth_methods: list[AuthMethod] = field(default_factory=list)

    @property
    def sam_account_name(self) -> str:
        return self.upn.split("@", 1)[0]

    @property
    def distinguished_name(self) -> str:
        domain = ",".join(f"DC={part}" for part in self.upn.split("@", 1)[1].split("."))
        return f"CN={self.display_name},OU=Users,{domain}"

    def public(self) -> dict[str, Any]:
        return {
            "upn": self.upn,
            "display_name": self.display_name,
            "on_premises_sync": self.on_premises_sync,
            "password_sha256": self.password_sha256,
            "password_changed_at": _iso(self.password_changed_at),
            "force_change_password": self.force_change_password,
            "sessions_revoked_at": _iso(self.sessions_revoked_at),
            "inbox_rules": [asdict(rule) for rule in self.inbox_rules],
            "forwarding_smtp_address": self.forwarding_smtp_address,
            "forwarding_address": self.forwarding_address,
            "deliver_to_mailbox_and_forward": self.deliver_to_mailbox_and_forward,
            "client_side_rules": self.client_side_rules,
            "mailbox_permissions": [asdict(p) for p in self.mailbox_permissions],
            "send_as": [asdict(p) for p in self.send_as],
            "auth_methods": [
                {"id": m.method_id, "type": m.odata_type, "created": _iso(m.created), **m.fields}
                for m in self.auth_methods
            ],
        }


@dataclass
class BlockedSender:
    address: str
    reason: str
    created: datetime
    changed: datetime
    temporary_block: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "reason": self.reason,
            "created": _iso(self.created),
            "changed": _iso(self.changed),
            "temporary_block": self.temporary_block,
        }


@dataclass
class Fault:
    cmdlet: str  # a command name, or "*" for any
    kind: FaultKind
    times: int

    def matches(self, cmdlet: str) -> bool:
        return self.times > 0 and (self.cmdlet == "*" or self.cmdlet.lower() == cmdlet.lower())


@dataclass
class SandboxConfig:
    latency_ms: dict[str, float] = field(default_factory=dict)
    unblock_limit_per_day: int = 3
    send_restore_delay_s: float = 0.0
    reblock_on_unblock: list[str] = field(default_factory=list)
    throttle_retry_after_s: int = 2
    #: Absent from the endpoint, as from a JEA role capability without them (CommandNotFoundException,
    #: missing from Get-Command and from GetCommandMetadata).
    denied_cmdlets: list[str] = field(default_factory=list)
    #: Present but refused when run, as for a sign-in that lacks the RBAC role or Graph permission.
    forbidden_cmdlets: list[str] = field(default_factory=list)
    #: The application permissions Get-MgContext reports as granted (Scopes), as `unblock doctor` reads them.
    graph_permissions: list[str] = field(
        default_factory=lambda: [
            "User.Read.All",
            "User-PasswordProfile.ReadWrite.All",
            "User.RevokeSessions.All",
            "UserAuthenticationMethod.Read.All",
            "Directory.Read.All",
            "Application.Read.All",
        ]
    )

    def hides(self, cmdlet: str) -> bool:
        return cmdlet.lower() in {d.lower() for d in self.denied_cmdlets}

    def forbids(self, cmdlet: str) -> bool:
        return cmdlet.lower() in {d.lower() for d in self.forbidden_cmdlets}

    def latency_for(self, cmdlet: str) -> float:
        for key, value in self.latency_ms.items():
            if key.lower() == cmdlet.lower():
                return value / 1000
        if cmdlet.lower().startswith("connect-"):
            for key in ("Connect-*", "connect-*"):
                if key in self.latency_ms:
                    return self.latency_ms[key] / 1000
        return self.latency_ms.get("*", 0.0) / 1000


@dataclass
class Call:
    seq: int
    at: datetime
    runspace: str  # "<shell id>/<runspace index>"
    cmdlet: str
    parameters: dict[str, Any]
    outcome: str
    tenant: str = CONTOSO.name  # the short name of the tenant the command ran against

    def public(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": _iso(self.at),
            "tenant": self.tenant,
            "runspace": self.runspace,
            "cmdlet": self.cmdlet,
            "parameters": self.parameters,
            "outcome": self.outcome,
        }


class CallLog:
    """Every command the sandbox received, in one sequence across tenants (guarded by its owner's lock)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.seq = 0

    def record(self, *, tenant: str, runspace: str, cmdlet: str, parameters: dict[str, Any], outcome: str) -> Call:
        self.seq += 1
        call = Call(self.seq, now_utc(), runspace, cmdlet, parameters, outcome, tenant)
        self.calls.append(call)
        return call

    def clear(self, tenant: str | None = None) -> None:
        """Forget every call, or only ``tenant``'s; the sequence goes on (``?since=`` stays valid)."""
        self.calls = [c for c in self.calls if tenant is not None and c.tenant != tenant]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def demo_reason(internal: int, external: int, limit: str = "External") -> str:
    return (
        f"EmailSendingLimitExceeded;InternalRecipientCountToday={internal};"
        f"ExternalRecipientCountToday={external};ExceedingLimitType={limit}"
    )


class Tenant:
    """One tenant's state; every public method takes the lock (the sandbox's, shared by its tenants).

    ``Tenant(seed)`` alone is contoso by itself, with a lock and a call log of its own; the tenants
    of a running sandbox are made by :class:`Tenants` and share its lock and call log.
    """

    def __init__(self, seed: str = "demo", *, profile: TenantProfile = CONTOSO, sandbox: Tenants | None = None) -> None:
        self.profile = profile
        self.sandbox = sandbox
        self.lock: threading.RLock = sandbox.lock if sandbox is not None else threading.RLock()
        self.log: CallLog = sandbox.log if sandbox is not None else CallLog()
        self.reseed(seed)

    @property
    def name(self) -> str:
        return self.profile.name

    def describe(self) -> dict[str, Any]:
        """Who this tenant is, as ``GET /_sandbox/state`` lists it."""
        return {
            "name": self.name,
            "initial_domain": self.initial_domain,
            "tenant_id": self.tenant_id,
            "accepted_domains": list(self.accepted_domains),
        }

    # --- lifecycle -------------------------------------------------------------------------

    def reset(self, seed: str = "demo") -> None:
        """A fresh sandbox: for a tenant of one, every tenant, the call log, faults and config
        (``Tenants.reset``), which is what resetting the sandbox's tenant has always meant. Use
        :meth:`reseed` to reset this tenant alone."""
        if self.sandbox is not None:
            self.sandbox.reset(seed)
            return
        if seed not in SEED_TENANTS:
            raise ValueError("seed must be demo or empty")
        with self.lock:
            self.log.calls.clear()
            self.log.seq = 0
            self.reseed(seed)

    def reseed(self, seed: str = "demo") -> None:
        """This tenant alone back to ``seed``: directory, restricted list, history, faults and config.
        The call log (the sandbox's) is kept."""
        if seed not in SEED_TENANTS:
            raise ValueError("seed must be demo or empty")
        with self.lock:
            self.seed = seed
            self.users: dict[str, User] = {}
            self.senders: dict[str, BlockedSender] = {}
            self.accepted_domains: list[str] = list(self.profile.accepted_domains)
            self.initial_domain = self.profile.initial_domain
            self.tenant_id = self.profile.tenant_id
            self.unblocks: dict[str, list[datetime]] = {}
            self.removed_at: dict[str, datetime] = {}
            self.pending_reblocks: dict[str, datetime] = {}
            self.config = SandboxConfig()
            self.service_principals: dict[str, ServicePrincipal] = {}
            self.oauth_grants: list[OAuthGrant] = []
            self.faults: list[Fault] = []
            self._object_seq = self.profile.object_base
            if seed == "demo":
                if self.profile.name == FABRIKAM.name:
                    self._seed_fabrikam()
                elif self.profile.name == CONTOSO.name:
                    self._seed_demo()

    def _seed_demo(self) -> None:
        at = now_utc() - timedelta(hours=2)
        for name, display in (
            ("rob", "Rob Young"),
            ("laura", "Laura Norman"),
            ("julia", "Julia Ortiz"),
            ("ann", "Ann Beebe"),
            ("ben", "Ben Miller"),
        ):
            self.add_user(f"{name}@{DEFAULT_DOMAIN}", display_name=display)
        rob = self.users[f"rob@{DEFAULT_DOMAIN}"]
        rob.inbox_rules = [
            InboxRule("1001", "Team updates", move_to_folder="Team"),
            InboxRule("1002", ".", move_to_folder="RSS Feeds", delete_message=False),
            InboxRule("1003", "invoice", forward_to=["payments@fabrikam.example"], delete_message=True),
        ]
        rob.forwarding_smtp_address = "smtp:collector@fabrikam.example"
        rob.client_side_rules = True  # changing his rules asks first, unless -Force
        # victor: a second factor registered yesterday on a phone nobody recognises, and a consent that
        # lets an unverified app read and change his mail. Neither is the service's to remove alone.
        victor = self.add_user(f"victor@{DEFAULT_DOMAIN}", display_name="Victor Hale")
        self.add_auth_method(
            victor.upn,
            "microsoftAuthenticator",
            created=now_utc() - timedelta(days=1),
            fields={
                "displayName": "Galaxy A15",
                "deviceTag": "SoftwareTokenActivated",
                "phoneAppVersion": "6.2401.0119",
            },
        )
        app = self.add_service_principal("Mail Sync Pro", owner_tenant_id="5f2c7a9e-3b1d-4e8f-9a6c-2d4b8e1f0c37")
        self.add_oauth_grant(victor.upn, app, "Mail.ReadWrite offline_access User.Read")
        for address, (internal, external, limit) in DEMO_RESTRICTED.items():
            self.restrict(address, demo_reason(internal, external, limit), at=at)

    def _seed_fabrikam(self) -> None:
        """Two clean users (no rules, forwarding, recent sign-in methods or consents); mia is restricted."""
        at = now_utc() - timedelta(hours=1)
        self.add_user(f"mia@{FABRIKAM_DOMAIN}", display_name="Mia Hoffmann")
        self.add_user(f"noah@{FABRIKAM_DOMAIN}", display_name="Noah Lindqvist")
        for address, (internal, external, limit) in FABRIKAM_RESTRICTED.items():
            self.restrict(address, demo_reason(internal, external, limit), at=at)

    # --- users -----------------------------------------------------------------------------

    def add_user(self, upn: str, *, display_name: str | None = None, on_premises_sync: bool = False) -> User:
        with self.lock:
            key = upn.lower()
            if key in self.users:
                raise ValueError(f"user {upn} exists")
            self._object_seq += 1
            local = upn.split("@", 1)[0]
            user = User(
                upn=key,
                display_name=display_name or local.replace(".", " ").title(),
                on_premises_sync=on_premises_sync,
                object_id=f"00000000-0000-4000-8000-{self._object_seq:012d}",
                password_sha256=sha256(f"initial-{key}"),
            )
            self.users[key] = user
            return user

    def _user(self, upn: str) -> User:
        user = self.find_user(upn)
        if user is None:
            raise ValueError(f"no user {upn}")
        return user

    def _next_id(self) -> int:
        self._object_seq += 1
        return self._object_seq

    # --- what an attacker leaves (tests and the demo seed set these) -------------------------------

    def add_inbox_rule(self, upn: str, name: str, *, hidden: bool = False, **actions: Any) -> InboxRule:
        """A rule with the next id; ``actions`` are :class:`InboxRule` fields (forward_to=[...], ...)."""
        with self.lock:
            user = self._user(upn)
            rule = InboxRule(str(1000 + self._next_id()), name, hidden=hidden, **actions)
            user.inbox_rules.append(rule)
            return rule

    def set_forwarding(
        self,
        upn: str,
        *,
        smtp_address: str | None = None,
        address: str | None = None,
        deliver_and_forward: bool = False,
    ) -> None:
        """Mailbox forwarding as Set-Mailbox leaves it (ForwardingSmtpAddress carries "smtp:")."""
        with self.lock:
            user = self._user(upn)
            user.forwarding_smtp_address = f"smtp:{smtp_address}" if smtp_address else None
            user.forwarding_address = address
            user.deliver_to_mailbox_and_forward = deliver_and_forward

    def add_mailbox_permission(self, upn: str, user: str, rights: tuple[str, ...] = ("FullAccess",)) -> None:
        with self.lock:
            self._user(upn).mailbox_permissions.append(MailboxPermission(user, list(rights)))

    def add_send_as(self, upn: str, trustee: str) -> None:
        with self.lock:
            self._user(upn).send_as.append(SendAs(trustee))

    def add_auth_method(
        self,
        upn: str,
        kind: str,
        *,
        created: datetime | None = None,
        fields: dict[str, Any] | None = None,
        method_id: str | None = None,
    ) -> AuthMethod:
        """``kind`` as Graph names the type, short (``phone``) or long (``phoneAuthenticationMethod``)."""
        with self.lock:
            user = self._user(upn)
            name = kind if kind.endswith("AuthenticationMethod") else f"{kind}AuthenticationMethod"
            method = AuthMethod(
                method_id=method_id or f"{self._next_id():08d}-0000-4000-a000-{len(user.auth_methods):012d}",
                odata_type=f"#microsoft.graph.{name}",
                created=created,
                fields=dict(fields or {}),
            )
            user.auth_methods.append(method)
            return method

    def add_service_principal(
        self,
        display_name: str,
        *,
        app_id: str | None = None,
        owner_tenant_id: str | None = None,
        verified_publisher: str | None = None,
    ) -> ServicePrincipal:
        with self.lock:
            seq = self._next_id()
            app = ServicePrincipal(
                object_id=f"{seq:08d}-5e5e-4000-8000-000000000000",
                display_name=display_name,
                app_id=app_id or f"{seq:08d}-a9b0-4000-8000-000000000000",
                owner_tenant_id=owner_tenant_id,
                verified_publisher=verified_publisher,
            )
            self.service_principals[app.object_id] = app
            return app

    def add_oauth_grant(
        self, upn: str, client: ServicePrincipal | str, scope: str, *, consent_type: str = "Principal"
    ) -> OAuthGrant:
        """A delegated consent of ``upn`` (Principal) or of the whole tenant (AllPrincipals) to an app."""
        with self.lock:
            user = self._user(upn)
            client_id = client.object_id if isinstance(client, ServicePrincipal) else client
            grant = OAuthGrant(
                grant_id=f"grant-{self._next_id():06d}-{client_id[:8]}",
                client_id=client_id,
                principal_id=user.object_id if consent_type == "Principal" else None,
                resource_id=GRAPH_RESOURCE_ID,
                scope=f" {scope.strip()}",  # Graph's own examples start the string with a space
                consent_type=consent_type,
            )
            self.oauth_grants.append(grant)
            return grant

    def find_user(self, identity: str) -> User | None:
        """By UPN, object id, sAMAccountName or distinguished name, as the cmdlets accept."""
        with self.lock:
            key = identity.strip().lower()
            if key in self.users:
                return self.users[key]
            for user in self.users.values():
                if key in (user.object_id, user.sam_account_name.lower(), user.distinguished_name.lower()):
                    return user
            return None

    # --- the restricted list -----------------------------------------------------------------

    def restrict(
        self,
        address: str,
        reason: str | None = None,
        *,
        temporary_block: bool = False,
        at: datetime | None = None,
    ) -> BlockedSender:
        with self.lock:
            when = at or now_utc()
            key = address.lower()
            sender = BlockedSender(
                address=key,
                reason=reason or demo_reason(0, 500),
                created=when,
                changed=when,
                temporary_block=temporary_block,
            )
            self.senders[key] = sender
            self.removed_at.pop(key, None)
            return sender

    def apply_due_reblocks(self, now: datetime | None = None) -> None:
        """A still-compromised account starts spamming once it can send again, and is restricted again."""
        with self.lock:
            now = now or now_utc()
            for address, due in list(self.pending_reblocks.items()):
                if due <= now:
                    del self.pending_reblocks[address]
                    self.restrict(address, demo_reason(3, 900), at=due)

    def listed(self) -> list[BlockedSender]:
        with self.lock:
            self.apply_due_reblocks()
            return sorted(self.senders.values(), key=lambda s: s.created)

    def lookup(self, address: str) -> BlockedSender | None:
        with self.lock:
            self.apply_due_reblocks()
            return self.senders.get(address.lower())

    def unblocks_today(self, address: str, now: datetime) -> int:
        with self.lock:
            recent = [t for t in self.unblocks.get(address.lower(), []) if now - t < timedelta(hours=24)]
            self.unblocks[address.lower()] = recent
            return len(recent)

    def unblock(self, address: str, now: datetime) -> None:
        with self.lock:
            key = address.lower()
            self.senders.pop(key, None)
            self.unblocks.setdefault(key, []).append(now)
            self.removed_at[key] = now
            if key in {a.lower() for a in self.config.reblock_on_unblock}:
                self.pending_reblocks[key] = now + timedelta(seconds=self.config.send_restore_delay_s)

    def can_send(self, address: str, now: datetime | None = None) -> tuple[bool, datetime | None]:
        with self.lock:
            now = now or now_utc()
            key = address.lower()
            self.apply_due_reblocks(now)
            if key in self.senders:
                return False, None
            removed = self.removed_at.get(key)
            if removed is None:
                return True, None
            at = removed + timedelta(seconds=self.config.send_restore_delay_s)
            return now >= at, at

    # --- faults and the call log -----------------------------------------------------------

    def add_fault(self, cmdlet: str, kind: str, times: int) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self.lock:
            fault = Fault(cmdlet=cmdlet, kind=kind, times=times)  # type: ignore[arg-type]
            self.faults.append(fault)
            return fault

    def take_fault(self, cmdlet: str, kinds: tuple[FaultKind, ...] | None = None) -> FaultKind | None:
        """The first armed fault for ``cmdlet`` (of ``kinds``, if given), used up by one."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(cmdlet) and (kinds is None or fault.kind in kinds):
                    fault.times -= 1
                    kind = fault.kind
                    self.faults = [f for f in self.faults if f.times > 0]
                    return kind
            return None

    @property
    def calls(self) -> list[Call]:
        """The calls that ran against this tenant, in order (the sandbox's whole log: ``Tenants.calls``)."""
        with self.lock:
            return [c for c in self.log.calls if c.tenant == self.name]

    def record_call(self, *, runspace: str, cmdlet: str, parameters: dict[str, Any], outcome: str) -> Call:
        """Log a call against this tenant, next in the sandbox's one sequence."""
        with self.lock:
            return self.log.record(
                tenant=self.name, runspace=runspace, cmdlet=cmdlet, parameters=parameters, outcome=outcome
            )

    def configure(self, values: dict[str, Any]) -> SandboxConfig:
        with self.lock:
            if "latency_ms" in values:
                latency = values["latency_ms"]
                if not isinstance(latency, dict) or not all(
                    isinstance(v, int | float) and v >= 0 for v in latency.values()
                ):
                    raise ValueError("latency_ms must map command names (or '*') to milliseconds")
                self.config.latency_ms = {str(k): float(v) for k, v in latency.items()}
            if "unblock_limit_per_day" in values:
                limit = values["unblock_limit_per_day"]
                if not isinstance(limit, int) or limit < 0:
                    raise ValueError("unblock_limit_per_day must be a non-negative integer")
                self.config.unblock_limit_per_day = limit
            if "send_restore_delay_s" in values:
                delay = values["send_restore_delay_s"]
                if not isinstance(delay, int | float) or delay < 0:
                    raise ValueError("send_restore_delay_s must be a non-negative number")
                self.config.send_restore_delay_s = float(delay)
            if "reblock_on_unblock" in values:
                addresses = values["reblock_on_unblock"]
                if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
                    raise ValueError("reblock_on_unblock must be a list of addresses")
                self.config.reblock_on_unblock = [a.lower() for a in addresses]
            for key in ("denied_cmdlets", "forbidden_cmdlets", "graph_permissions"):
                if key in values:
                    names = values[key]
                    if not isinstance(names, list) or not all(isinstance(d, str) for d in names):
                        raise ValueError(f"{key} must be a list of names")
                    setattr(self.config, key, list(names))
            if "throttle_retry_after_s" in values:
                self.config.throttle_retry_after_s = int(values["throttle_retry_after_s"])
            return self.config

    def snapshot(self, shells: int) -> dict[str, Any]:
        with self.lock:
            return {
                "tenant": self.name,
                "initial_domain": self.initial_domain,
                "tenant_id": self.tenant_id,
                "users": [u.public() for u in self.users.values()],
                "senders": [s.public() for s in self.listed()],
                "shells": shells,
                "accepted_domains": list(self.accepted_domains),
                "config": asdict(self.config),
                "faults": [asdict(f) for f in self.faults],
            }


class Tenants(Mapping[str, Tenant]):
    """Every tenant the sandbox hosts, by short name, in order: the first is the default tenant.

    It owns what the tenants share: the lock and the call log. Which tenants exist is the seed's
    (:data:`SEED_TENANTS`): ``demo`` has contoso and fabrikam, ``empty`` contoso alone. A reset
    keeps the tenant objects that stay (the first always does), so ``sandbox.tenant`` stays valid.
    """

    def __init__(self, seed: str = "demo") -> None:
        self.lock = threading.RLock()
        self.log = CallLog()
        self._tenants: dict[str, Tenant] = {}
        self.reset(seed)

    @classmethod
    def around(cls, tenant: Tenant) -> Tenants:
        """The sandbox of a tenant made alone (``Tenant(seed)``), with that tenant first and its state kept."""
        if tenant.sandbox is not None:
            return tenant.sandbox
        tenants = cls.__new__(cls)
        tenants.lock, tenants.log = tenant.lock, tenant.log
        tenants._tenants = {tenant.name: tenant}
        tenant.sandbox = tenants
        return tenants

    # --- the mapping ---------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Tenant:
        return self._tenants[name.lower()]

    def __iter__(self) -> Iterator[str]:
        with self.lock:
            return iter(list(self._tenants))

    def __len__(self) -> int:
        return len(self._tenants)

    @property
    def first(self) -> Tenant:
        with self.lock:
            return next(iter(self._tenants.values()))

    def named(self, name: str) -> Tenant:
        """The tenant with this short name; ValueError names the ones there are."""
        with self.lock:
            tenant = self._tenants.get(name.lower())
            if tenant is None:
                raise ValueError(f"no tenant {name!r}; the sandbox has {', '.join(self._tenants)}")
            return tenant

    def by_organization(self, organization: str) -> Tenant | None:
        """Connect-ExchangeOnline -Organization: app-only sign-in names the initial domain, nothing else."""
        key = organization.strip().lower()
        with self.lock:
            return next((t for t in self._tenants.values() if t.initial_domain == key), None)

    def by_graph_tenant(self, tenant_id: str) -> Tenant | None:
        """Connect-MgGraph -TenantId: the tenant id, or any of the tenant's domains."""
        key = tenant_id.strip().lower()
        with self.lock:
            for tenant in self._tenants.values():
                if key in (tenant.tenant_id, tenant.initial_domain, *tenant.accepted_domains):
                    return tenant
            return None

    def describe(self) -> list[dict[str, Any]]:
        with self.lock:
            return [t.describe() for t in self._tenants.values()]

    def add(self, profile: TenantProfile) -> Tenant:
        """Another tenant, empty (tests arrange its users and restricted list); kept until a reset."""
        with self.lock:
            if profile.name in self._tenants:
                raise ValueError(f"tenant {profile.name} exists")
            tenant = Tenant("empty", profile=profile, sandbox=self)
            self._tenants[profile.name] = tenant
            return tenant

    # --- lifecycle and the call log ----------------------------------------------------------------

    def reset(self, seed: str = "demo") -> None:
        """Every tenant back to ``seed`` (and only the seed's tenants), the call log emptied."""
        if seed not in SEED_TENANTS:
            raise ValueError("seed must be demo or empty")
        with self.lock:
            self.log.calls.clear()
            self.log.seq = 0
            profiles = list(SEED_TENANTS[seed])
            first = next(iter(self._tenants.values()), None)
            if first is not None:  # the first tenant stays first (and the same object)
                profiles = [first.profile, *(p for p in profiles if p.name != first.name)]
            kept: dict[str, Tenant] = {}
            for profile in profiles:
                tenant = self._tenants.get(profile.name)
                if tenant is None:
                    tenant = Tenant(seed, profile=profile, sandbox=self)
                else:
                    tenant.reseed(seed)
                kept[profile.name] = tenant
            self._tenants = kept

    @property
    def calls(self) -> list[Call]:
        """Every call, of every tenant, in order."""
        with self.lock:
            return list(self.log.calls)


def as_tenants(value: Tenants | Tenant) -> Tenants:
    return value if isinstance(value, Tenants) else Tenants.around(value)
