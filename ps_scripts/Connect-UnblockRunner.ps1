<#
.SYNOPSIS
    Signs a new UnblockRunner JEA session in to Exchange Online and Microsoft Graph.

.DESCRIPTION
    Runs once per JEA session, while the session is being built and before any command of the
    caller runs: the UnblockRunner module manifest lists this script in ScriptsToProcess, and the
    UnblockRunner role capability imports that module (last, after ExchangeOnlineManagement).

    It signs in app-only with the certificate of the Entra application, reading the application
    id, certificate thumbprint, organization and tenant from the machine-wide configuration that
    Install-UnblockRunner.ps1 writes:

        %ProgramData%\UnblockRunner\runner.json

    It takes no input from the caller. Exchange Online loads only the commands the service uses
    (-CommandName; EXCHANGE_COMMANDS in service/powershell/commands.py): those the role capability
    exposes (the investigation's read-only Get-Mailbox, Get-MailboxPermission and
    Get-RecipientPermission included), and Set-Mailbox, which only the Clear-UnblockForwarding
    wrapper calls. The Graph commands need no such list: the role capability imports their
    modules after this script has signed in.

    Exchange Online is connected before Microsoft Graph is loaded: the two modules ship their own
    copies of the Microsoft identity libraries, and on Windows PowerShell 5.1 the first copy loaded
    is the one both get (see docs/runner-host.md, "Troubleshooting").

    Any failure stops the script, which fails the module import and so the session: the service
    then reports the endpoint as unavailable instead of running half-connected.

.NOTES
    The certificate must be in Cert:\LocalMachine\My with its private key readable by the account
    the session runs as (the JEA virtual account is a local administrator, so a key imported by
    Install-UnblockRunner.ps1 is). Both modules look in CurrentUser\My first, then LocalMachine\My.
#>
#Requires -Version 5.1

# A child scope, so nothing defined here (preferences included) leaks into the JEA session.
& {
    $ErrorActionPreference = 'Stop'
    Set-StrictMode -Version 3.0

    $configPath = Join-Path -Path $env:ProgramData -ChildPath 'UnblockRunner\runner.json'
    if (-not (Test-Path -LiteralPath $configPath -PathType Leaf)) {
        throw "UnblockRunner: $configPath is missing; run Install-UnblockRunner.ps1."
    }
    $config = Get-Content -LiteralPath $configPath -Raw -Encoding UTF8 | ConvertFrom-Json
    foreach ($key in 'AppId', 'CertificateThumbprint', 'Organization', 'TenantId') {
        $property = $config.PSObject.Properties[$key]
        if ($null -eq $property -or [string]::IsNullOrWhiteSpace([string]$property.Value)) {
            throw "UnblockRunner: $configPath has no $key; run Install-UnblockRunner.ps1 again."
        }
    }

    $exchange = @{
        AppId                 = [string]$config.AppId
        CertificateThumbprint = [string]$config.CertificateThumbprint
        Organization          = [string]$config.Organization
        ShowBanner            = $false
        # Only what the service uses; each one is a generated function (Set-Mailbox stays hidden
        # behind the Clear-UnblockForwarding wrapper).
        CommandName           = @(
            'Get-AcceptedDomain',
            'Get-BlockedSenderAddress',
            'Remove-BlockedSenderAddress',
            'Set-Mailbox',
            'Get-InboxRule',
            'Disable-InboxRule',
            'Get-Mailbox',
            'Get-MailboxPermission',
            'Get-RecipientPermission'
        )
        # No format data: nothing is formatted in a remoting session, and loading it is slow.
        SkipLoadingFormatData = $true
        ErrorAction           = 'Stop'
    }
    Connect-ExchangeOnline @exchange

    Import-Module -Name 'Microsoft.Graph.Authentication' -ErrorAction Stop
    $graph = @{
        ClientId              = [string]$config.AppId
        CertificateThumbprint = [string]$config.CertificateThumbprint
        TenantId              = [string]$config.TenantId
        NoWelcome             = $true
        # Keep the token in this process only; nothing is cached in the virtual account's profile.
        ContextScope          = 'Process'
        ErrorAction           = 'Stop'
    }
    Connect-MgGraph @graph

    $context = Get-MgContext
    if ($null -eq $context -or [string]$context.AuthType -ne 'AppOnly') {
        throw 'UnblockRunner: Connect-MgGraph did not produce an app-only context.'
    }
}
