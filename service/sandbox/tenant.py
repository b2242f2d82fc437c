"""The emulated tenant: users, the restricted-sender list, and the knobs tests turn.

State lives in memory behind one lock: the sandbox's event loop mutates it while a test
thread may read it. Nothing here speaks a protocol; :mod:`service.sandbox.cmdlets` reads and
writes it on behalf of remote commands and :mod:`service.sandbox.control` exposes it as JSON.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

DEFAULT_DOMAIN = "contoso.com"
ONMICROSOFT_DOMAIN = "contoso.onmicrosoft.com"
FAULT_KINDS = ("transient", "throttled", "fatal", "drop_connection", "hang")
FaultKind = Literal["transient", "throttled", "fatal", "drop_connection", "hang"]


def now_utc() -> datetime:
    return datetime.now(UTC)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class InboxRule:
    rule_id: str
    name: str
    enabled: bool = True
    forward_to: list[str] = field(default_factory=list)
    redirect_to: list[str] = field(default_factory=list)
    delete_message: bool = False
    move_to_folder: str | None = None


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
            "deliver_to_mailbox_and_forward": self.deliver_to_mailbox_and_forward,
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
    denied_cmdlets: list[str] = field(default_factory=list)

    def denies(self, cmdlet: str) -> bool:
        return cmdlet.lower() in {d.lower() for d in self.denied_cmdlets}

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
    runspace: str
    cmdlet: str
    parameters: dict[str, Any]
    outcome: str

    def public(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": _iso(self.at),
            "runspace": self.runspace,
            "cmdlet": self.cmdlet,
            "parameters": self.parameters,
            "outcome": self.outcome,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def demo_reason(internal: int, external: int, limit: str = "External") -> str:
    return (
        f"EmailSendingLimitExceeded;InternalRecipientCountToday={internal};"
        f"ExternalRecipientCountToday={external};ExceedingLimitType={limit}"
    )


class Tenant:
    """Tenant state; every public method takes the lock."""

    def __init__(self, seed: str = "demo") -> None:
        self.lock = threading.RLock()
        self.reset(seed)

    # --- lifecycle -------------------------------------------------------------------------

    def reset(self, seed: str = "demo") -> None:
        if seed not in ("demo", "empty"):
            raise ValueError("seed must be demo or empty")
        with self.lock:
            self.seed = seed
            self.users: dict[str, User] = {}
            self.senders: dict[str, BlockedSender] = {}
            self.accepted_domains: list[str] = [DEFAULT_DOMAIN, ONMICROSOFT_DOMAIN]
            self.unblocks: dict[str, list[datetime]] = {}
            self.removed_at: dict[str, datetime] = {}
            self.pending_reblocks: dict[str, datetime] = {}
            self.config = SandboxConfig()
            self.faults: list[Fault] = []
            self.calls: list[Call] = []
            self._seq = 0
            self._object_seq = 0
            if seed == "demo":
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
        for name, internal, external, limit in (
            ("rob", 12, 480, "External"),
            ("laura", 1020, 3, "Internal"),
            ("julia", 40, 10400, "Total"),
        ):
            self.restrict(f"{name}@{DEFAULT_DOMAIN}", demo_reason(internal, external, limit), at=at)

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

    def take_fault(self, cmdlet: str) -> FaultKind | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(cmdlet):
                    fault.times -= 1
                    kind = fault.kind
                    self.faults = [f for f in self.faults if f.times > 0]
                    return kind
            return None

    def record_call(self, *, runspace: str, cmdlet: str, parameters: dict[str, Any], outcome: str) -> Call:
        with self.lock:
            self._seq += 1
            call = Call(self._seq, now_utc(), runspace, cmdlet, parameters, outcome)
            self.calls.append(call)
            return call

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
            if "denied_cmdlets" in values:
                denied = values["denied_cmdlets"]
                if not isinstance(denied, list) or not all(isinstance(d, str) for d in denied):
                    raise ValueError("denied_cmdlets must be a list of command names")
                self.config.denied_cmdlets = list(denied)
            if "throttle_retry_after_s" in values:
                self.config.throttle_retry_after_s = int(values["throttle_retry_after_s"])
            return self.config

    def snapshot(self, shells: int) -> dict[str, Any]:
        with self.lock:
            return {
                "users": [u.public() for u in self.users.values()],
                "senders": [s.public() for s in self.listed()],
                "shells": shells,
                "accepted_domains": list(self.accepted_domains),
                "config": asdict(self.config),
                "faults": [asdict(f) for f in self.faults],
            }
