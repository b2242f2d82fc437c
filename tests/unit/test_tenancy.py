"""Which tenant a mailbox belongs to, and who sees which tenant (service.domain.tenancy)."""

from __future__ import annotations

import pytest

from service.domain.tenancy import TenantDomains, accepted_by, check_name, route, visible
from service.errors import AmbiguousTenant, ForeignMailbox, InvalidInput, UnknownTenant

CONTOSO = TenantDomains("default", True, ("contoso.com", "contoso.onmicrosoft.com"))
FABRIKAM = TenantDomains("fabrikam", True, ("fabrikam.com",))


def test_the_tenant_whose_domains_hold_the_mailbox() -> None:
    assert route("mia@fabrikam.com", [CONTOSO, FABRIKAM]) == "fabrikam"
    assert route("rob@CONTOSO.com".lower(), [CONTOSO, FABRIKAM]) == "default"


def test_a_named_tenant_must_exist_take_cases_and_accept_the_domain() -> None:
    assert route("mia@fabrikam.com", [CONTOSO, FABRIKAM], requested="fabrikam") == "fabrikam"
    with pytest.raises(UnknownTenant):
        route("mia@fabrikam.com", [CONTOSO], requested="fabrikam")
    with pytest.raises(UnknownTenant):
        route("mia@fabrikam.com", [CONTOSO, TenantDomains("fabrikam", False, ("fabrikam.com",))], requested="fabrikam")
    with pytest.raises(ForeignMailbox):
        route("rob@contoso.com", [CONTOSO, FABRIKAM], requested="fabrikam")
    # A named tenant whose domains are not known yet takes the case; the worker checks the domain.
    assert route("x@new.example", [TenantDomains("new", True, None)], requested="new") == "new"


def test_no_tenant_is_foreign_once_all_domains_are_known_and_undecided_before() -> None:
    with pytest.raises(ForeignMailbox) as refused:
        route("eve@tailspin.example", [CONTOSO, FABRIKAM])
    assert refused.value.context["domain"] == "tailspin.example"
    assert route("eve@tailspin.example", [CONTOSO, TenantDomains("new", True, None)]) is None
    # The only tenant takes it while its domains are unknown (as before tenants: the worker checks).
    assert route("eve@tailspin.example", [TenantDomains("default", True, None)]) == "default"
    # A disabled tenant neither takes cases nor keeps intake waiting for its domains.
    with pytest.raises(ForeignMailbox):
        route("eve@tailspin.example", [CONTOSO, TenantDomains("old", False, None)])


def test_two_tenants_accepting_a_domain_is_ambiguous() -> None:
    twin = TenantDomains("twin", True, ("fabrikam.com",))
    with pytest.raises(AmbiguousTenant):
        route("mia@fabrikam.com", [CONTOSO, FABRIKAM, twin])
    assert route("mia@fabrikam.com", [CONTOSO, FABRIKAM, twin], requested="twin") == "twin"


def test_names() -> None:
    assert check_name(" Fabrikam ") == "fabrikam"
    for bad in ("", "-x", "x-", "a_b", "a" * 33, "ünïcode", "a b"):
        with pytest.raises(InvalidInput):
            check_name(bad)


def test_visibility() -> None:
    assert visible("fabrikam", None)
    assert visible(None, None)
    assert visible("fabrikam", ["fabrikam"])
    assert not visible("default", ["fabrikam"])
    assert not visible(None, ["fabrikam"])


def test_accepted_by_needs_the_tenant_s_domains_known() -> None:
    """Intake starts a case's reset in its own transaction only for a mailbox whose domain the
    routed tenant is known to accept: not for the only tenant, nor a named one, whose domains are
    not read yet (the worker checks those before anything is sealed or sent)."""
    known = [TenantDomains("a", True, ("contoso.com",)), TenantDomains("b", True, None)]
    assert accepted_by("rob@Contoso.com", "a", known)
    assert not accepted_by("rob@fabrikam.com", "a", known)
    assert not accepted_by("rob@contoso.com", "b", known)  # b's domains are not read yet
    assert not accepted_by("rob@contoso.com", None, known)
    assert not accepted_by("rob@contoso.com", "gone", known)
    only = [TenantDomains("default", True, None)]
    assert route("rob@contoso.com", only) == "default"  # routed, yet not known to accept it
    assert not accepted_by("rob@contoso.com", "default", only)
