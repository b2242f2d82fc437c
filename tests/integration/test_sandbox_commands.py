"""Every emulated command through pypsrp: outputs, real error records, and tenant behaviour."""

from __future__ import annotations

import hashlib
import re
import time

from pypsrp.serializer import TaggedValue

from service.sandbox.server import SandboxServer
from service.sandbox.tenant import DEMO_RESTRICTED
from tests.sandbox_client import APP, GRAPH, open_pool, run


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- connecting --------------------------------------------------------------------------------


def test_exchange_cmdlets_do_not_exist_before_connect(sandbox: SandboxServer) -> None:
    """Before Connect-ExchangeOnline the module has generated no commands: CommandNotFoundException."""
    with open_pool(sandbox, connect=False) as pool:
        result = run(pool, "Get-BlockedSenderAddress")
    assert result.failed
    assert result.error_ids == ["CommandNotFoundException"]
    assert "is not recognized" in result.messages[0]


def test_graph_cmdlets_need_connect_mggraph(sandbox: SandboxServer) -> None:
    """Graph cmdlets before Connect-MgGraph fail with the SDK's authentication error."""
    with open_pool(sandbox, connect=False) as pool:
        result = run(pool, "Get-MgUser", UserId="rob@contoso.com")
    assert result.failed
    assert "Please call Connect-MgGraph" in result.messages[0]


def test_connect_exchange_online_app_only(sandbox: SandboxServer) -> None:
    """App-only Connect-ExchangeOnline succeeds; -ShowBanner:$false keeps the banner out."""
    with open_pool(sandbox, connect=False) as pool:
        quiet = run(pool, "Connect-ExchangeOnline", ShowBanner=False, **APP)
        loud = run(pool, "Connect-ExchangeOnline", **APP)
    assert not quiet.failed
    assert quiet.information == []
    assert loud.information, "without -ShowBanner:$false the module prints its banner"


def test_connect_exchange_online_refuses_interactive_and_unknown_organizations(
    sandbox: SandboxServer,
) -> None:
    """No interactive sign-in in a remote session; an organization the tenant does not have is refused."""
    with open_pool(sandbox, connect=False) as pool:
        interactive = run(pool, "Connect-ExchangeOnline", UserPrincipalName="admin@contoso.com")
        foreign = run(pool, "Connect-ExchangeOnline", **{**APP, "Organization": "northwind.onmicrosoft.com"})
    assert interactive.failed
    assert "app-only" in interactive.messages[0]
    assert foreign.failed
    assert "northwind.onmicrosoft.com" in foreign.messages[0]


def test_command_name_loads_only_the_named_cmdlets(sandbox: SandboxServer) -> None:
    """Connect-ExchangeOnline -CommandName makes only those cmdlets available in the runspace."""
    with open_pool(sandbox, connect=False) as pool:
        run(pool, "Connect-ExchangeOnline", CommandName=["Get-BlockedSenderAddress"], ShowBanner=False, **APP)
        allowed = run(pool, "Get-BlockedSenderAddress")
        other = run(pool, "Get-Mailbox", Identity="rob@contoso.com")
    assert not allowed.failed
    assert other.error_ids == ["CommandNotFoundException"]


def test_disconnect_exchange_online(sandbox: SandboxServer) -> None:
    """After Disconnect-ExchangeOnline the Exchange cmdlets are gone again."""
    with open_pool(sandbox) as pool:
        run(pool, "Disconnect-ExchangeOnline", Confirm=False)
        assert run(pool, "Get-AcceptedDomain").error_ids == ["CommandNotFoundException"]


# --- the restricted list ------------------------------------------------------------------------


def test_get_accepted_domain(sandbox: SandboxServer) -> None:
    """Get-AcceptedDomain lists the tenant's domains with their real property names."""
    with open_pool(sandbox) as pool:
        result = run(pool, "Get-AcceptedDomain")
    assert [result.prop(i, "DomainName") for i in range(len(result.output))] == [
        "contoso.com",
        "contoso.onmicrosoft.com",
    ]
    assert result.prop(0, "Default") is True


def test_get_blocked_sender_address(sandbox: SandboxServer) -> None:
    """The full list, one sender, and a sender that is not listed (no output, no error)."""
    with open_pool(sandbox) as pool:
        every = run(pool, "Get-BlockedSenderAddress")
        one = run(pool, "Get-BlockedSenderAddress", SenderAddress="ROB@contoso.com")
        none = run(pool, "Get-BlockedSenderAddress", SenderAddress="ann@contoso.com")
    assert sorted(every.prop(i, "SenderAddress") for i in range(3)) == [
        "julia@contoso.com",
        "laura@contoso.com",
        "rob@contoso.com",
    ]
    assert one.prop(0, "Reason").startswith("EmailSendingLimitExceeded;InternalRecipientCountToday=12;")
    assert one.prop(0, "TemporaryBlock") is False
    assert one.output[0].types[0] == "Microsoft.Exchange.Management.Hygiene.BlockedSenderAddress"
    assert isinstance(one.prop(0, "CreatedDatetime"), str)  # DateTime arrives as text to pypsrp
    assert none.output == []
    assert none.errors == []
    assert every.progress, "the full list reports progress records"


def test_remove_blocked_sender_address(sandbox: SandboxServer) -> None:
    """Remove takes the sender off the list; removing one that is not listed is Exchange's not-found error."""
    with open_pool(sandbox) as pool:
        removed = run(pool, "Remove-BlockedSenderAddress", SenderAddress="rob@contoso.com", Reason="ticket INC1")
        gone = run(pool, "Get-BlockedSenderAddress", SenderAddress="rob@contoso.com")
        again = run(pool, "Remove-BlockedSenderAddress", SenderAddress="rob@contoso.com")
    assert not removed.failed
    assert removed.errors == []
    assert gone.output == []
    assert not again.failed  # a non-terminating error: the pipeline completes
    # Exchange Online v3's shape (Write-ErrorMessage): the id names the request, the reason the exception
    assert again.error_ids[0].startswith("[Server=")
    assert again.error_ids[0].endswith("],Write-ErrorMessage")
    assert again.errors[0].reason == "ManagementObjectNotFoundException"
    assert again.errors[0].activity == "Remove-BlockedSenderAddress"
    assert again.errors[0].category == 0  # NotSpecified
    assert re.match(
        r"^Ex[0-9A-F]{6}\|Microsoft\.Exchange\.Configuration\.Tasks\.ManagementObjectNotFoundException\|"
        r"The operation couldn't be performed because object 'rob@contoso\.com' couldn't be found",
        again.messages[0],
    )
    assert sandbox.tenant.calls[-1].outcome == "error: ManagementObjectNotFoundException"


def test_the_unblock_limit(sandbox: SandboxServer) -> None:
    """After N unblocks of one address in 24 hours, Remove-BlockedSenderAddress refuses."""
    sandbox.tenant.configure({"unblock_limit_per_day": 2})
    with open_pool(sandbox) as pool:
        for _ in range(2):
            assert run(pool, "Remove-BlockedSenderAddress", SenderAddress="rob@contoso.com").errors == []
            sandbox.tenant.restrict("rob@contoso.com")
        refused = run(pool, "Remove-BlockedSenderAddress", SenderAddress="rob@contoso.com")
        still = run(pool, "Get-BlockedSenderAddress", SenderAddress="rob@contoso.com")
    # Microsoft does not publish this error's text: the v3 shape with an assumed exception (README)
    assert refused.error_ids[0].endswith("],Write-ErrorMessage")
    assert refused.errors[0].reason == "UnblockLimitExceededException"
    assert len(still.output) == 1


def test_a_removed_sender_can_send_only_after_the_restore_delay(sandbox: SandboxServer, control) -> None:  # type: ignore[no-untyped-def]
    """Sending comes back after a delay (Microsoft: hours), which the control API shows."""
    control.post("/config", json={"send_restore_delay_s": 0.5})
    with open_pool(sandbox) as pool:
        run(pool, "Remove-BlockedSenderAddress", SenderAddress="laura@contoso.com")
    soon = control.get("/users/laura@contoso.com").json()
    assert soon["can_send"] is False
    time.sleep(0.6)
    assert control.get("/users/laura@contoso.com").json()["can_send"] is True


def test_a_compromised_sender_is_blocked_again(sandbox: SandboxServer) -> None:
    """With reblock_on_unblock, the sender is back on the list once it can send again."""
    sandbox.tenant.configure({"reblock_on_unblock": ["julia@contoso.com"], "send_restore_delay_s": 0.3})
    with open_pool(sandbox) as pool:
        run(pool, "Remove-BlockedSenderAddress", SenderAddress="julia@contoso.com")
        right_after = run(pool, "Get-BlockedSenderAddress", SenderAddress="julia@contoso.com")
        time.sleep(0.4)
        later = run(pool, "Get-BlockedSenderAddress", SenderAddress="julia@contoso.com")
    assert right_after.output == []
    assert len(later.output) == 1


# --- mailbox, rules, forwarding -----------------------------------------------------------------


def test_mailbox_forwarding_is_read_and_cleared(sandbox: SandboxServer) -> None:
    """Get-Mailbox shows forwarding; Set-Mailbox -ForwardingSmtpAddress $null clears it."""
    with open_pool(sandbox) as pool:
        before = run(pool, "Get-Mailbox", Identity="rob@contoso.com")
        run(
            pool,
            "Set-Mailbox",
            Identity="rob@contoso.com",
            ForwardingSmtpAddress=None,
            DeliverToMailboxAndForward=False,
        )
        after = run(pool, "Get-Mailbox", Identity="rob@contoso.com")
        missing = run(pool, "Get-Mailbox", Identity="nobody@contoso.com")
    assert before.prop(0, "ForwardingSmtpAddress") == "smtp:collector@fabrikam.example"
    assert after.prop(0, "ForwardingSmtpAddress") is None
    assert missing.errors[0].reason == "ManagementObjectNotFoundException"


def test_inbox_rules_are_listed_and_disabled(sandbox: SandboxServer) -> None:
    """Get-InboxRule lists rules with their actions; Disable-InboxRule turns one off."""
    with open_pool(sandbox) as pool:
        rules = run(pool, "Get-InboxRule", Mailbox="rob@contoso.com")
        identity = rules.prop(2, "Identity")
        disabled = run(
            pool, "Disable-InboxRule", Mailbox="rob@contoso.com", Identity=identity, Force=True, Confirm=False
        )
        after = run(pool, "Get-InboxRule", Mailbox="rob@contoso.com")
        unknown = run(
            pool, "Disable-InboxRule", Mailbox="rob@contoso.com", Identity="rob@contoso.com\\999", Confirm=False
        )
    assert len(rules.output) == 3
    # Exchange prints a recipient as its display name and routing address (no directory entry: the address twice).
    assert rules.prop(2, "ForwardTo") == ['"payments@fabrikam.example" [SMTP:payments@fabrikam.example]']
    assert rules.prop(2, "DeleteMessage") is True
    assert disabled.errors == []
    assert "delete any rules" in str(disabled.warnings[0].message)  # the real cmdlet's Outlook warning
    assert after.prop(2, "Enabled") is False
    assert unknown.errors[0].reason == "ManagementObjectNotFoundException"


def test_a_command_that_would_prompt_fails_as_in_a_host_without_ui(sandbox: SandboxServer) -> None:
    """Disable-InboxRule asks for confirmation unless -Confirm:$false, and about the mailbox's Outlook rules
    unless -Force; pypsrp sends no host, so PowerShell fails the command instead (HostFunctionNotImplemented)."""
    with open_pool(sandbox) as pool:
        identity = run(pool, "Get-InboxRule", Mailbox="rob@contoso.com").prop(2, "Identity")
        unconfirmed = run(pool, "Disable-InboxRule", Mailbox="rob@contoso.com", Identity=identity)
        unforced = run(pool, "Disable-InboxRule", Mailbox="rob@contoso.com", Identity=identity, Confirm=False)
    for refused in (unconfirmed, unforced):
        assert refused.failed
        assert refused.error_ids[0].startswith("HostFunctionNotImplemented,")
        assert refused.errors[0].reason == "HostException"
        assert "does not support user interaction" in refused.messages[0]
    assert "Outlook" in unforced.messages[0]
    assert all(rule["enabled"] for rule in sandbox.tenant.find_user("rob@contoso.com").public()["inbox_rules"])


# --- Graph -------------------------------------------------------------------------------------------


def test_get_mguser(sandbox: SandboxServer) -> None:
    """Get-MgUser returns the user; an unknown one is Graph's Request_ResourceNotFound."""
    with open_pool(sandbox) as pool:
        found = run(pool, "Get-MgUser", UserId="rob@contoso.com")
        missing = run(pool, "Get-MgUser", UserId="zed@contoso.com")
    assert found.prop(0, "UserPrincipalName") == "rob@contoso.com"
    assert found.prop(0, "OnPremisesSyncEnabled") is None
    assert missing.error_ids == ["Request_ResourceNotFound,Microsoft.Graph.PowerShell.Cmdlets.GetMgUser_Get"]
    assert "does not exist" in missing.messages[0]


def test_update_mguser_sets_the_password(sandbox: SandboxServer) -> None:
    """Update-MgUser -PasswordProfile sets the password and the force-change flag."""
    with open_pool(sandbox) as pool:
        result = run(
            pool,
            "Update-MgUser",
            UserId="rob@contoso.com",
            PasswordProfile={"Password": "Tmp-Passw0rd-1234", "ForceChangePasswordNextSignIn": True},
        )
    assert result.errors == []
    user = sandbox.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.password_sha256 == _sha("Tmp-Passw0rd-1234")
    assert user.force_change_password is True
    logged = sandbox.tenant.calls[-1].parameters["PasswordProfile"]
    assert logged["Password"] == {"sha256": _sha("Tmp-Passw0rd-1234")}


def test_update_mguser_refuses_a_weak_password(sandbox: SandboxServer) -> None:
    """Entra ID's complexity rule: the weak password is refused with Graph's error."""
    with open_pool(sandbox) as pool:
        result = run(pool, "Update-MgUser", UserId="rob@contoso.com", PasswordProfile={"Password": "password"})
    assert result.error_ids == ["Request_BadRequest,Microsoft.Graph.PowerShell.Cmdlets.UpdateMgUser_UpdateExpanded"]
    assert "complexity" in result.messages[0]


def test_update_mguser_refuses_a_synced_user(sandbox: SandboxServer) -> None:
    """A user mastered on-premises cannot have its password set through Graph."""
    sandbox.tenant.add_user("sam@contoso.com", on_premises_sync=True)
    with open_pool(sandbox) as pool:
        result = run(pool, "Update-MgUser", UserId="sam@contoso.com", PasswordProfile={"Password": "Tmp-Passw0rd-1234"})
    assert "on-premises mastered Directory Sync objects" in result.messages[0]


def test_revoke_sign_in_sessions(sandbox: SandboxServer) -> None:
    """Revoke-MgUserSignInSession records the revocation and returns true."""
    with open_pool(sandbox) as pool:
        result = run(pool, "Revoke-MgUserSignInSession", UserId="rob@contoso.com")
    assert result.output == [True]
    user = sandbox.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.sessions_revoked_at is not None


# --- Active Directory ----------------------------------------------------------------------------------


def test_ad_user_lookup_and_password_reset_through_the_pipeline(sandbox: SandboxServer) -> None:
    """Get-ADUser -LDAPFilter | Set-ADAccountPassword -Reset -NewPassword <SecureString>."""
    sandbox.tenant.add_user("sam.jones@contoso.com", on_premises_sync=True)
    with open_pool(sandbox) as pool:
        pool.exchange_keys()
        found = run(pool, "Get-ADUser", LDAPFilter="(userPrincipalName=sam.jones@contoso.com)")
        reset = run(
            pool,
            "Get-ADUser",
            LDAPFilter="(userPrincipalName=sam.jones@contoso.com)",
            piped=[
                (
                    "Set-ADAccountPassword",
                    {"Reset": True, "NewPassword": TaggedValue("SS", "Ad-Passw0rd-5678")},
                )
            ],
        )
    assert found.prop(0, "SamAccountName") == "sam.jones"
    assert found.output[0].types[0] == "Microsoft.ActiveDirectory.Management.ADUser"
    assert reset.errors == []
    user = sandbox.tenant.find_user("sam.jones@contoso.com")
    assert user is not None
    assert user.password_sha256 == _sha("Ad-Passw0rd-5678")


def test_ad_does_not_know_cloud_only_users(sandbox: SandboxServer) -> None:
    """A cloud-only user is not in AD: Get-ADUser throws ADIdentityNotFoundException."""
    with open_pool(sandbox) as pool:
        result = run(pool, "Get-ADUser", Identity="rob")
        by_filter = run(pool, "Get-ADUser", LDAPFilter="(userPrincipalName=rob@contoso.com)")
    assert result.failed
    assert "ADIdentityNotFoundException" in result.error_ids[0]
    assert by_filter.output == []


# --- PowerShell itself --------------------------------------------------------------------------------


def test_unknown_commands_fail_like_powershell(sandbox: SandboxServer) -> None:
    """Any other command: the CommandNotFoundException error record, and a failed pipeline."""
    with open_pool(sandbox) as pool:
        result = run(pool, "Invoke-Expression", Command="whoami")
    assert result.failed
    assert result.error_ids == ["CommandNotFoundException"]
    assert result.errors[0].category == 13  # ObjectNotFound


def test_parameter_binding_like_powershell(sandbox: SandboxServer) -> None:
    """Unknown, ambiguous and missing parameters are refused; prefixes and positions bind."""
    with open_pool(sandbox) as pool:
        unknown = run(pool, "Get-BlockedSenderAddress", Sender2="x")
        ambiguous = run(pool, "Connect-ExchangeOnline", Cert="x")
        missing = run(pool, "Remove-BlockedSenderAddress")
        prefix = run(pool, "Get-BlockedSenderAddress", senderaddr="rob@contoso.com")
        wrong_type = run(pool, "Set-Mailbox", Identity="rob@contoso.com", DeliverToMailboxAndForward="yes")
    assert unknown.error_ids[0].startswith("NamedParameterNotFound,")
    assert ambiguous.error_ids[0].startswith("AmbiguousParameter,")
    assert missing.error_ids[0].startswith("MissingMandatoryParameter,")
    assert "SenderAddress" in missing.messages[0]
    assert len(prefix.output) == 1
    # Windows PowerShell 5.1: a string for a [bool] parameter is an argument-transformation error naming .NET types
    assert wrong_type.error_ids[0].startswith("ParameterArgumentTransformationError,")
    assert 'Cannot convert value "System.String" to type "System.Boolean"' in wrong_type.messages[0]


def test_hostile_values_are_data_not_code(sandbox: SandboxServer) -> None:
    """A bound parameter is never evaluated: it is looked up as data (and not found), nothing runs; through
    the JEA endpoint the role capability's ValidatePattern refuses it before the command runs."""
    hostile = "x@contoso.com; Remove-Mailbox -Identity *"
    with open_pool(sandbox) as pool:
        full = run(pool, "Remove-BlockedSenderAddress", SenderAddress=hostile)
    with open_pool(sandbox, connect=False, configuration="UnblockRunner") as pool:
        jea = run(pool, "Remove-BlockedSenderAddress", SenderAddress=hostile)
    assert "ManagementObjectNotFoundException" in full.errors[0].reason
    assert jea.error_ids[0].startswith("ParameterArgumentValidationError,")
    assert len(sandbox.tenant.listed()) == len(DEMO_RESTRICTED)


def test_scripts_are_not_run(sandbox: SandboxServer) -> None:
    """The sandbox runs named commands only; script text is refused."""
    from pypsrp.powershell import PowerShell

    with open_pool(sandbox) as pool:
        ps = PowerShell(pool)
        ps.add_script("Get-BlockedSenderAddress | Remove-BlockedSenderAddress")
        ps.invoke()
        assert ps.had_errors
        assert str(ps.streams.error[0].fq_error) == "ScriptsNotAllowed"
        ps.close()
    assert len(sandbox.tenant.listed()) == len(DEMO_RESTRICTED)


def test_the_jea_endpoint_exposes_only_its_visible_commands(sandbox: SandboxServer) -> None:
    """UnblockRunner: connected by its startup script, only the role capability's commands visible."""
    with open_pool(sandbox, connect=False, configuration="UnblockRunner") as pool:
        listed = run(pool, "Get-BlockedSenderAddress")
        connect = run(pool, "Connect-ExchangeOnline", **APP)
        other = run(pool, "Remove-Mailbox", Identity="rob@contoso.com")
        graph = run(pool, "Connect-MgGraph", **GRAPH)
    assert len(listed.output) == len(DEMO_RESTRICTED)
    assert connect.error_ids == ["CommandNotFoundException"]
    assert other.error_ids == ["CommandNotFoundException"]
    assert graph.error_ids == ["CommandNotFoundException"]


def test_what_the_real_cmdlets_refuse_is_refused(sandbox: SandboxServer) -> None:
    """Microsoft's reference, not our assumptions: Remove-BlockedSenderAddress has no -Confirm,
    Get-BlockedSenderAddress no -ResultSize, and app-only Connect-ExchangeOnline needs the initial domain."""
    with open_pool(sandbox) as pool:
        confirm = run(pool, "Remove-BlockedSenderAddress", SenderAddress="rob@contoso.com", Confirm=False)
        result_size = run(pool, "Get-BlockedSenderAddress", ResultSize="Unlimited")
        vanity = run(pool, "Connect-ExchangeOnline", **{**APP, "Organization": "contoso.com"})
        not_a_guid = run(pool, "Connect-ExchangeOnline", **{**APP, "AppId": "unblock-app"})
    assert confirm.failed
    assert confirm.error_ids == ["NamedParameterNotFound,Remove-BlockedSenderAddress"]
    assert confirm.messages == ["A parameter cannot be found that matches parameter name 'Confirm'."]
    assert result_size.error_ids == ["NamedParameterNotFound,Get-BlockedSenderAddress"]
    assert vanity.failed
    assert "initial domain" in vanity.messages[0]
    assert not_a_guid.failed
    assert len(sandbox.tenant.listed()) == len(DEMO_RESTRICTED)  # nothing was unblocked


# --- the investigation reads -----------------------------------------------------------------------


def test_the_investigation_reads_bind_only_their_documented_parameters(sandbox: SandboxServer) -> None:
    """Get-MgUserOauth2PermissionGrant needs -UserId; the tenant-wide list has none; Get-MailboxPermission
    has no -ResultSize... each refusal is PowerShell's binding error, not a sandbox invention."""
    with open_pool(sandbox) as pool:
        no_user = run(pool, "Get-MgOauth2PermissionGrant", UserId="victor@contoso.com")
        hidden_typo = run(pool, "Get-InboxRule", Mailbox="rob@contoso.com", IncludeHiden=True)
        listed = run(pool, "Get-MgOauth2PermissionGrant", All=True)
    assert no_user.failed
    assert no_user.error_ids[0].startswith("NamedParameterNotFound")
    assert hidden_typo.failed
    assert hidden_typo.error_ids[0].startswith("NamedParameterNotFound")
    assert not listed.failed
    assert len(listed.output) == 1


def test_consents_filter_by_principal_and_refuse_what_is_not_emulated(sandbox: SandboxServer) -> None:
    victor = sandbox.tenant.find_user("victor@contoso.com")
    assert victor is not None
    with open_pool(sandbox) as pool:
        mine = run(pool, "Get-MgOauth2PermissionGrant", Filter=f"principalId eq '{victor.object_id}'", All=True)
        nobody = run(
            pool, "Get-MgOauth2PermissionGrant", Filter="principalId eq '00000000-0000-4000-8000-999999999999'"
        )
        unknown = run(pool, "Get-MgOauth2PermissionGrant", Filter="startswith(scope, 'Mail')")
    assert not mine.failed
    assert mine.prop(0, "Scope").split() == ["Mail.ReadWrite", "offline_access", "User.Read"]
    assert mine.prop(0, "PrincipalId") == victor.object_id
    assert not nobody.failed
    assert nobody.output == []
    assert unknown.failed
    assert "does not emulate" in unknown.messages[0]


def test_sign_in_methods_keep_their_graph_json_in_additional_properties(sandbox: SandboxServer) -> None:
    with open_pool(sandbox) as pool:
        result = run(pool, "Get-MgUserAuthenticationMethod", UserId="victor@contoso.com", All=True)
        missing = run(pool, "Get-MgUserAuthenticationMethod", UserId="zed@contoso.com")
    assert not result.failed
    types = [result.prop(i, "AdditionalProperties")["@odata.type"] for i in range(len(result.output))]
    assert types == [
        "#microsoft.graph.passwordAuthenticationMethod",
        "#microsoft.graph.microsoftAuthenticatorAuthenticationMethod",
    ]
    assert "createdDateTime" in result.prop(1, "AdditionalProperties")
    assert "Request_ResourceNotFound" in missing.error_ids[0]


def test_hidden_rules_need_include_hidden(sandbox: SandboxServer) -> None:
    sandbox.tenant.add_inbox_rule("ben@contoso.com", "x", hidden=True, delete_message=True)
    with open_pool(sandbox) as pool:
        shown = run(pool, "Get-InboxRule", Mailbox="ben@contoso.com")
        everything = run(pool, "Get-InboxRule", Mailbox="ben@contoso.com", IncludeHidden=True)
    assert shown.output == []
    assert [everything.prop(0, "Name"), everything.prop(0, "DeleteMessage")] == ["x", True]


def test_mailbox_and_recipient_permissions(sandbox: SandboxServer) -> None:
    sandbox.tenant.add_mailbox_permission("ann@contoso.com", "ben@contoso.com", ("FullAccess",))
    with open_pool(sandbox) as pool:
        full = run(pool, "Get-MailboxPermission", Identity="ann@contoso.com")
        send_as = run(pool, "Get-RecipientPermission", Identity="ann@contoso.com")
        missing = run(pool, "Get-MailboxPermission", Identity="zed@contoso.com")
    assert [full.prop(i, "User") for i in range(len(full.output))] == ["NT AUTHORITY\\SELF", "ben@contoso.com"]
    assert send_as.prop(0, "AccessRights") == ["SendAs"]
    assert "zed@contoso.com" in missing.messages[0]
