"""Judging what an investigation read, and what the case does about it: pure, no tenant needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain import decide as d
from service.domain.decide import CaseView, StepView, Succeeded
from service.domain.findings import (
    MICROSOFT_TENANT_ID,
    ContainmentPlan,
    Finding,
    FindingAction,
    FindingKind,
    judge_auth_method,
    judge_forwarding,
    judge_grant,
    judge_mailbox_permission,
    judge_rule,
    judge_send_as,
    merged,
    needs_review,
    with_actions,
)
from service.domain.retry import RetryPolicy
from service.domain.states import CaseOutcome, CaseState, StepName, StepStatus
from service.domain.tenant import (
    AuthMethod,
    Forwarding,
    InboxRule,
    MailboxPermission,
    OAuthGrant,
    RecipientPermission,
    Restriction,
    ServicePrincipal,
)
from service.domain.transitions import Action, apply

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DOMAINS = ("contoso.com", "contoso.onmicrosoft.com")
ENFORCE = ContainmentPlan(disable_rules=True, clear_forwarding=True)
REPORT = ContainmentPlan(disable_rules=False, clear_forwarding=False)
POLICY = RetryPolicy(initial_interval=1, maximum_interval=10, maximum_attempts=3)
TIMING = d.Timing(propagation_wait=60, recheck_interval=10)


# --- inbox rules ---------------------------------------------------------------------------------------


def test_the_demo_rules_are_judged_as_microsoft_describes() -> None:
    team = judge_rule(InboxRule("rob\\1001", "Team updates", True, move_to_folder="Team"), DOMAINS)
    dot = judge_rule(InboxRule("rob\\1002", ".", True, move_to_folder="RSS Feeds", mark_as_read=True), DOMAINS)
    invoice = judge_rule(
        InboxRule(
            "rob\\1003",
            "invoice",
            True,
            forward_to=("payments@fabrikam.example",),
            delete_message=True,
            subject_or_body_contains=("invoice",),
        ),
        DOMAINS,
    )
    assert not team.suspicious
    assert team.reasons == ()
    assert dot.suspicious
    assert any("RSS Feeds" in r for r in dot.reasons)
    assert any("marks" in r for r in dot.reasons)
    assert invoice.suspicious
    assert invoice.reasons == (
        "sends mail outside the tenant to payments@fabrikam.example",
        "deletes the messages it matches",
        "triggers on invoice",
    )


def test_forwarding_inside_the_tenant_or_to_a_directory_recipient_is_not_outside() -> None:
    internal = InboxRule("r\\1", "to boss", True, forward_to=("boss@contoso.com", "Rob Knight"))
    assert not judge_rule(internal, DOMAINS).suspicious
    redirect = InboxRule("r\\2", "out", True, redirect_to=("x@gmail.example",))
    assert judge_rule(redirect, DOMAINS).reasons == ("sends mail outside the tenant to x@gmail.example",)


@pytest.mark.parametrize("folder", ["RSS Feeds", "rob@contoso.com:\\RSS Subscriptions", "Archive", "Junk Email"])
def test_folders_that_hide_mail(folder: str) -> None:
    assert judge_rule(InboxRule("r\\1", "x", True, move_to_folder=folder), DOMAINS).suspicious


def test_a_hidden_rule_says_so_only_when_it_is_suspicious_for_another_reason() -> None:
    junk = judge_rule(InboxRule("r\\0", "Junk E-mail Rule", True, hidden=True), DOMAINS)
    assert not junk.suspicious
    sneaky = judge_rule(InboxRule("r\\9", "x", True, delete_message=True, hidden=True), DOMAINS)
    assert "is hidden from Outlook's rule list" in sneaky.reasons


def test_what_containment_will_do_follows_the_plan() -> None:
    rules = [
        judge_rule(InboxRule("r\\1", "Team", True, move_to_folder="Team"), DOMAINS),
        judge_rule(InboxRule("r\\2", "bad", True, delete_message=True), DOMAINS),
        judge_rule(InboxRule("r\\3", "bad but off", False, delete_message=True), DOMAINS),
    ]
    assert [f.action for f in with_actions(rules, ENFORCE)] == [
        FindingAction.none,
        FindingAction.disable,
        FindingAction.none,
    ]
    assert [f.action for f in with_actions(rules, REPORT)] == [
        FindingAction.none,
        FindingAction.reported,
        FindingAction.none,
    ]


# --- forwarding, delegates -------------------------------------------------------------------------------


def test_mailbox_forwarding() -> None:
    assert judge_forwarding(Forwarding(), DOMAINS) is None
    outside = judge_forwarding(Forwarding(smtp_address="collector@fabrikam.example"), DOMAINS)
    assert outside is not None
    assert outside.suspicious
    assert outside.reasons == (
        "forwards all mail outside the tenant to collector@fabrikam.example",
        "keeps no copy in the mailbox",
    )
    assert with_actions([outside], ENFORCE)[0].action is FindingAction.clear
    assert with_actions([outside], REPORT)[0].action is FindingAction.reported
    inside = judge_forwarding(Forwarding(smtp_address="team@contoso.com", deliver_and_forward=True), DOMAINS)
    assert inside is not None
    assert not inside.suspicious
    directory = judge_forwarding(Forwarding(address="Rob's assistant"), DOMAINS)
    assert directory is not None
    assert not directory.suspicious  # whose address is not read: recorded, not judged


def test_delegates_are_for_a_person_to_judge() -> None:
    own = MailboxPermission("NT AUTHORITY\\SELF", ("FullAccess", "ReadPermission"))
    assert judge_mailbox_permission(own, "rob@contoso.com") is None
    assert judge_mailbox_permission(MailboxPermission("x@contoso.com", ("FullAccess",), inherited=True), "r") is None
    delegate = judge_mailbox_permission(MailboxPermission("eve@contoso.com", ("FullAccess",)), "rob@contoso.com")
    assert delegate is not None
    assert delegate.kind is FindingKind.mailbox_permission
    assert with_actions([delegate], ENFORCE)[0].action is FindingAction.review
    assert judge_send_as(RecipientPermission("NT AUTHORITY\\SELF", ("SendAs",)), "rob@contoso.com") is None
    send_as = judge_send_as(RecipientPermission("eve@contoso.com", ("SendAs",)), "rob@contoso.com")
    assert send_as is not None
    assert send_as.summary == "eve@contoso.com can send as the mailbox"


# --- sign-in methods, consents ---------------------------------------------------------------------------


AUTHENTICATOR = "#microsoft.graph.microsoftAuthenticatorAuthenticationMethod"


def test_a_sign_in_method_registered_this_week_needs_a_person() -> None:
    recent = AuthMethod("m1", AUTHENTICATOR, "Pixel 8", NOW - timedelta(days=1))
    finding = judge_auth_method(recent, NOW)
    assert finding is not None
    assert finding.summary == "microsoftAuthenticator sign-in method 'Pixel 8' registered 1.0 days ago"
    assert with_actions([finding], REPORT)[0].action is FindingAction.review
    assert judge_auth_method(AuthMethod("m2", AUTHENTICATOR, "old", NOW - timedelta(days=30)), NOW) is None
    assert judge_auth_method(AuthMethod("m3", "#microsoft.graph.phoneAuthenticationMethod"), NOW) is None  # no date
    password = AuthMethod("p", "#microsoft.graph.passwordAuthenticationMethod", created_at=NOW)
    assert judge_auth_method(password, NOW) is None


def test_an_app_with_mail_scopes_needs_a_person_unless_microsoft_publishes_it() -> None:
    grant = OAuthGrant("g1", "sp1", "Principal", "graph", ("Mail.ReadWrite", "offline_access"))
    unknown = ServicePrincipal("sp1", "Mail Sync Pro", "app-1", owner_tenant_id="0a1b2c3d-0000-0000-0000-000000000001")
    finding = judge_grant(grant, unknown)
    assert finding is not None
    assert finding.reasons == ("the app has delegated Mail.ReadWrite", "its publisher is not verified")
    outlook = ServicePrincipal("sp1", "Outlook Mobile", "27922004", owner_tenant_id=MICROSOFT_TENANT_ID)
    assert judge_grant(grant, outlook) is None
    harmless = OAuthGrant("g2", "sp1", "Principal", "graph", ("User.Read", "openid"))
    assert judge_grant(harmless, unknown) is None


def test_merging_updates_by_kind_and_key() -> None:
    a = Finding(FindingKind.inbox_rule, "r\\1", "a", action=FindingAction.disable)
    b = Finding(FindingKind.forwarding, "mailbox-forwarding", "b", action=FindingAction.clear)
    done = Finding(FindingKind.inbox_rule, "r\\1", "a", action=FindingAction.disabled)
    assert merged([a, b], [done]) == (done, b)
    assert Finding.from_dict(done.as_dict()) == done


# --- the decisions -----------------------------------------------------------------------------------


def _case(state: CaseState, findings: tuple[Finding, ...] = (), **statuses: StepStatus) -> CaseView:
    names = (
        StepName.reset_password,
        StepName.revoke_sessions,
        StepName.investigate,
        StepName.disable_inbox_rules,
        StepName.remove_forwarding,
        StepName.check_restriction,
        StepName.unblock,
        StepName.verify,
        StepName.propagation,
    )
    steps = tuple(StepView(n, statuses.get(n.value, StepStatus.pending)) for n in names)
    return CaseView(state, steps, findings=findings)


REVIEW = Finding(FindingKind.auth_method, "m1", "new method", suspicious=True, action=FindingAction.review)
RESTRICTION = Restriction("victor@contoso.com", "EmailSendingLimitExceeded", NOW, NOW, False)


def test_the_preparing_steps_walk_through_the_new_states() -> None:
    """securing -> investigating -> containing -> checking, each by its declared action."""
    done = StepStatus.succeeded
    secured = d.decide(
        _case(CaseState.securing_account, reset_password=done),
        StepName.revoke_sessions,
        Succeeded(),
        NOW,
        policy=POLICY,
        timing=TIMING,
    )
    assert (secured.action, secured.state) == (Action.investigate, CaseState.investigating)
    found = (Finding(FindingKind.inbox_rule, "r\\2", "bad", suspicious=True, action=FindingAction.disable),)
    investigated = d.decide(
        _case(CaseState.investigating, reset_password=done, revoke_sessions=done),
        StepName.investigate,
        Succeeded(findings=found),
        NOW,
        policy=POLICY,
        timing=TIMING,
    )
    assert (investigated.action, investigated.state, investigated.findings) == (
        Action.contain,
        CaseState.containing,
        found,
    )
    # a rule to disable, and no forwarding to clear: that step is skipped with the investigation's result
    assert [(c.name, c.status) for c in investigated.steps] == [
        (StepName.investigate, StepStatus.succeeded),
        (StepName.remove_forwarding, StepStatus.skipped),
    ]
    contained = _case(CaseState.containing, reset_password=done, revoke_sessions=done, investigate=done)
    first = d.decide(
        contained, StepName.disable_inbox_rules, Succeeded(findings=found), NOW, policy=POLICY, timing=TIMING
    )
    assert (first.action, first.state) == (Action.check, CaseState.checking_restriction)
    forwarding = (Finding(FindingKind.forwarding, "fwd", "out", suspicious=True, action=FindingAction.clear),)
    first = d.decide(
        contained,
        StepName.disable_inbox_rules,
        Succeeded(findings=found + forwarding),
        NOW,
        policy=POLICY,
        timing=TIMING,
    )
    assert (first.action, first.state, len(first.steps)) == (None, CaseState.containing, 1)
    last = d.decide(
        _case(
            CaseState.containing, reset_password=done, revoke_sessions=done, investigate=done, disable_inbox_rules=done
        ),
        StepName.remove_forwarding,
        Succeeded(findings=found),
        NOW,
        policy=POLICY,
        timing=TIMING,
    )
    assert (last.action, last.state) == (Action.check, CaseState.checking_restriction)
    assert d.begin(_case(CaseState.received), StepName.investigate) is Action.investigate
    assert d.begin(_case(CaseState.securing_account), StepName.disable_inbox_rules) is Action.contain
    assert apply(Action.contain, CaseState.investigating) is CaseState.containing


def test_containment_with_nothing_to_do_is_skipped_with_the_investigation() -> None:
    """Nothing to disable or clear: both containment steps are skipped in the investigation's own decision,
    and the case goes straight to the check (no write, no step of their own)."""
    done = StepStatus.succeeded
    harmless = (Finding(FindingKind.inbox_rule, "r\\1", "tidy", suspicious=False, action=FindingAction.none),)
    for findings in ((), harmless):
        investigated = d.decide(
            _case(CaseState.investigating, reset_password=done, revoke_sessions=done),
            StepName.investigate,
            Succeeded(findings=findings),
            NOW,
            policy=POLICY,
            timing=TIMING,
        )
        assert (investigated.action, investigated.state) == (Action.check, CaseState.checking_restriction)
        assert [(c.name, c.status) for c in investigated.steps] == [
            (StepName.investigate, StepStatus.succeeded),
            (StepName.disable_inbox_rules, StepStatus.skipped),
            (StepName.remove_forwarding, StepStatus.skipped),
        ]


def test_findings_a_person_must_judge_stop_a_restricted_case_for_approval() -> None:
    view = _case(CaseState.checking_restriction, (REVIEW,))
    decision = d.decide(
        view, StepName.check_restriction, Succeeded(restriction=RESTRICTION), NOW, policy=POLICY, timing=TIMING
    )
    assert (decision.action, decision.state) == (Action.await_approval, CaseState.awaiting_approval)
    assert "new method" in decision.summary
    clean = d.decide(
        _case(CaseState.checking_restriction),
        StepName.check_restriction,
        Succeeded(restriction=RESTRICTION),
        NOW,
        policy=POLICY,
        timing=TIMING,
    )
    assert clean.state is CaseState.unblocking


def test_an_unrestricted_mailbox_with_such_findings_escalates_not_restricted() -> None:
    view = _case(CaseState.checking_restriction, (REVIEW,))
    decision = d.decide(view, StepName.check_restriction, Succeeded(), NOW, policy=POLICY, timing=TIMING)
    assert (decision.action, decision.state, decision.outcome) == (
        Action.escalate,
        CaseState.escalated,
        CaseOutcome.not_restricted,
    )
    assert decision.last_error is not None
    assert decision.last_error["code"] == "findings_need_review"
    assert "new method" in decision.last_error["message"]
    # A retry, once a person has dealt with them, investigates again.
    done = StepStatus.succeeded
    escalated = CaseView(
        CaseState.escalated,
        _case(CaseState.escalated, reset_password=done, revoke_sessions=done, investigate=done).steps,
        findings=(REVIEW,),
        outcome=CaseOutcome.not_restricted,
    )
    again = d.retry(escalated, NOW)
    assert (again.action, again.state) == (Action.retry_investigate, CaseState.investigating)
    assert again.steps[0].name is StepName.investigate


def test_needs_review_lists_only_review_findings() -> None:
    other = Finding(FindingKind.inbox_rule, "r", "x", suspicious=True, action=FindingAction.disabled)
    assert needs_review([REVIEW, other]) == [REVIEW]
