<#
    UnblockRunner module: the two commands the UnblockRunner JEA endpoint exposes instead of
    Update-MgUser and Set-Mailbox (service/powershell/commands.py: SET_RUNNER_PASSWORD and
    CLEAR_RUNNER_FORWARDING; the service calls them with UNBLOCK_PS_RUNNER_FUNCTIONS=true).

    Why wrappers:
      * Update-MgUser takes the new password in clear, inside the -PasswordProfile hashtable, and
        the JEA transcript records every parameter value of the commands the caller runs.
        Set-UnblockUserPassword takes it as a SecureString (the transcript shows only the type
        name) and builds the hashtable itself. PowerShell transcribes only the commands the remote
        caller invoked, not the ones a function calls from its script, so the inner Update-MgUser
        is not in the transcript. Module logging (event 4103) is different: if policy enables it
        for Microsoft.Graph.Users (or for every module), it records the inner call's parameter
        values, the password included (docs/runner-host.md, "Security notes").
      * The service clears forwarding by passing $null, and JEA's ValidateSet/ValidatePattern
        refuse $null, so an exposed Set-Mailbox could not have its forwarding parameters
        constrained: anyone allowed to connect could have set forwarding to any address.
        Clear-UnblockForwarding takes only the mailbox; the values are fixed below.

    The caller's values are only ever bound as parameters of named commands: nothing here turns a
    value into script text. Errors of the inner commands are not caught: with -ErrorAction Stop
    they end the wrapper and reach the caller as the original error record (same
    FullyQualifiedErrorId, category and exception), which the service classifies.

    Set-Mailbox is one of the Exchange commands Connect-UnblockRunner.ps1 loads
    (-CommandName); Update-MgUser comes from Microsoft.Graph.Users, which the role capability
    imports after this module. Both are looked up when a wrapper runs, not when this file loads,
    and JEA lets a function call commands that are not visible to the caller.
#>
#Requires -Version 5.1

Set-StrictMode -Version 3.0

function Set-UnblockUserPassword {
    <#
    .SYNOPSIS
        Resets the password of a cloud-only Entra ID user through Microsoft Graph.

    .DESCRIPTION
        Calls Update-MgUser -UserId <UserId> -PasswordProfile with the new password and whether
        the user must change it at next sign-in; no other property of the user is changed. The
        password arrives as a SecureString and is turned into plain text only in memory, for the
        request to Graph; the variables that hold it are cleared afterwards (a .NET string cannot
        be wiped, so a copy may stay in memory until the session ends).

        Errors of Update-MgUser (user not found, password too weak, on-premises synchronised
        user, missing permission, throttling) are returned unchanged.

    .PARAMETER UserId
        The user's principal name (an e-mail address).

    .PARAMETER NewPassword
        The new password, as a SecureString.

    .PARAMETER ForceChangePasswordNextSignIn
        $true: the user must choose a new password at next sign-in. $false: the password is kept.

    .EXAMPLE
        PS> Set-UnblockUserPassword -UserId rob@contoso.com -NewPassword (Read-Host -AsSecureString) -ForceChangePasswordNextSignIn $true

        Sets a temporary password that Rob must change at next sign-in.

    .NOTES
        Needs Graph application permission User.ReadWrite.All (or User-PasswordProfile.ReadWrite.All)
        and the User Administrator role (docs/runner-host.md).
    #>
    [CmdletBinding()]
    [Diagnostics.CodeAnalysis.SuppressMessageAttribute('PSUseShouldProcessForStateChangingFunctions', '',
        Justification = 'Called only by unblock-service through the JEA endpoint, never interactively.')]
    param(
        [Parameter(Mandatory)]
        [ValidatePattern('^[A-Za-z0-9._+''-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$')]
        [string] $UserId,

        [Parameter(Mandatory)]
        [ValidateNotNull()]
        [securestring] $NewPassword,

        [Parameter(Mandatory)]
        [bool] $ForceChangePasswordNextSignIn
    )

    # Preference variables do not cross into another module's functions, hence also
    # -ErrorAction Stop on the call itself.
    $ErrorActionPreference = 'Stop'
    $plainPassword = $null
    $passwordProfile = $null
    try {
        $plainPassword = [System.Net.NetworkCredential]::new('', $NewPassword).Password
        $passwordProfile = @{
            Password                      = $plainPassword
            ForceChangePasswordNextSignIn = $ForceChangePasswordNextSignIn
        }
        Update-MgUser -UserId $UserId -PasswordProfile $passwordProfile -ErrorAction Stop
    }
    finally {
        if ($null -ne $passwordProfile) { $passwordProfile.Clear() }
        $passwordProfile = $null
        $plainPassword = $null
    }
}

function Clear-UnblockForwarding {
    <#
    .SYNOPSIS
        Removes all mail forwarding from an Exchange Online mailbox.

    .DESCRIPTION
        Calls Set-Mailbox -Identity <Identity> -ForwardingSmtpAddress $null -ForwardingAddress
        $null -DeliverToMailboxAndForward $false: forwarding an attacker may have added is
        removed, and forwarding can never be set to anything through this command. No other
        setting of the mailbox is changed.

        Errors of Set-Mailbox (mailbox not found, missing permission, throttling) are returned
        unchanged.

    .PARAMETER Identity
        The mailbox's primary SMTP address.

    .EXAMPLE
        PS> Clear-UnblockForwarding -Identity rob@contoso.com

        Rob's mail is no longer forwarded anywhere.

    .NOTES
        Needs the Exchange Administrator or Exchange Recipient Administrator role
        (docs/runner-host.md).
    #>
    [CmdletBinding()]
    [Diagnostics.CodeAnalysis.SuppressMessageAttribute('PSUseShouldProcessForStateChangingFunctions', '',
        Justification = 'Called only by unblock-service through the JEA endpoint, never interactively.')]
    param(
        [Parameter(Mandatory)]
        [ValidatePattern('^[A-Za-z0-9._+''-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$')]
        [string] $Identity
    )

    # As above: -ErrorAction Stop on the call itself, as the preference does not reach Set-Mailbox.
    $ErrorActionPreference = 'Stop'
    Set-Mailbox -Identity $Identity -ForwardingSmtpAddress $null -ForwardingAddress $null -DeliverToMailboxAndForward $false -Confirm:$false -ErrorAction Stop
}

Export-ModuleMember -Function 'Set-UnblockUserPassword', 'Clear-UnblockForwarding'
