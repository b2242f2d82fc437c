#Requires -Version 5.1
#Requires -RunAsAdministrator

<#
.SYNOPSIS
    Installs or updates the UnblockRunner JEA endpoint that unblock-service connects to.

.DESCRIPTION
    Run on the Windows runner host, in an elevated Windows PowerShell 5.1, from the folder that
    holds the files of ps_scripts/. The script is idempotent: each step checks the current state
    and changes only what differs, so running it again after an update (or with the same
    arguments) is safe. Run it with -WhatIf first to see what it would change.

    It:
      1. installs, for all users and only if missing, the modules ExchangeOnlineManagement,
         Microsoft.Graph.Authentication, Microsoft.Graph.Users, Microsoft.Graph.Users.Actions,
         Microsoft.Graph.Identity.SignIns and Microsoft.Graph.Applications (and, with
         -IncludeActiveDirectory, the RSAT ActiveDirectory module);
      2. imports the application certificate into Cert:\LocalMachine\My (with -CertificatePath),
         or checks that the certificate given by -CertificateThumbprint is there with its
         private key;
      3. writes the module C:\Program Files\WindowsPowerShell\Modules\UnblockRunner (manifest,
         UnblockRunner.psm1 with the two wrapper commands, Connect-UnblockRunner.ps1,
         RoleCapabilities\UnblockRunner.psrc; the Active Directory commands are left out of the
         role capability unless -IncludeActiveDirectory);
      4. creates %ProgramData%\UnblockRunner, readable by Administrators and SYSTEM only, with
         runner.json (application id, certificate thumbprint, organization, tenant) and the
         Transcripts folder;
      5. writes the session configuration for -RunnerGroup and registers it under
         -ConfigurationName, only when it is not registered yet or its file changed (compared by
         SHA-256). Registering restarts the WinRM service, which ends every open remoting session
         on this host.

    Changing only the module (role capability, wrappers, sign-in script) or runner.json needs no
    re-registration: every new JEA session reads them.

    The endpoint exposes Set-UnblockUserPassword and Clear-UnblockForwarding instead of
    Update-MgUser and Set-Mailbox: the service must run with UNBLOCK_PS_RUNNER_FUNCTIONS=true.

.PARAMETER AppId
    Application (client) id of the Entra application the runner signs in as, for both Exchange
    Online and Microsoft Graph.

.PARAMETER CertificateThumbprint
    Thumbprint of the application certificate, already in Cert:\LocalMachine\My with its private
    key. Use this or -CertificatePath.

.PARAMETER CertificatePath
    Path of a .pfx file with the application certificate and its private key, to import into
    Cert:\LocalMachine\My (non-exportable). Use this or -CertificateThumbprint.

.PARAMETER CertificatePassword
    Password of the .pfx file given with -CertificatePath, as a SecureString
    (for example: Read-Host -AsSecureString).

.PARAMETER Organization
    The tenant's initial domain for Connect-ExchangeOnline -Organization, for example
    contoso.onmicrosoft.com.

.PARAMETER TenantId
    The tenant for Connect-MgGraph -TenantId: its id (a GUID) or a verified domain.

.PARAMETER RunnerGroup
    The group, as DOMAIN\Name, whose members may connect to the endpoint; the service's
    remoting account (UNBLOCK_PS_USERNAME) must be a member. Nobody else should be.

.PARAMETER ConfigurationName
    Name under which the endpoint is registered; the service's UNBLOCK_PS_CONFIGURATION_NAME.
    Default: UnblockRunner.

.PARAMETER IncludeActiveDirectory
    Also install the ActiveDirectory module and expose the Active Directory password reset
    commands, for accounts synchronised from on-premises AD (UNBLOCK_PASSWORD_BACKEND=ad).

.EXAMPLE
    PS> .\Install-UnblockRunner.ps1 -AppId 6f1c2a0e-1b2c-4d5e-8f90-123456789abc -CertificateThumbprint 0123456789ABCDEF0123456789ABCDEF01234567 -Organization contoso.onmicrosoft.com -TenantId contoso.onmicrosoft.com -RunnerGroup 'CONTOSO\UnblockService-Runners' -WhatIf

    Shows what would be installed and changed, changes nothing.

.EXAMPLE
    PS> $password = Read-Host -AsSecureString -Prompt 'PFX password'
    PS> .\Install-UnblockRunner.ps1 -AppId 6f1c2a0e-1b2c-4d5e-8f90-123456789abc -CertificatePath .\unblock-runner.pfx -CertificatePassword $password -Organization contoso.onmicrosoft.com -TenantId 0f2e4d6c-8b0a-4c2e-9f1d-3b5a7c9e1f20 -RunnerGroup 'CONTOSO\UnblockService-Runners' -IncludeActiveDirectory

    Imports the certificate, installs the modules (ActiveDirectory included) and registers the
    endpoint as UnblockRunner.

.NOTES
    Register a JEA endpoint only on a member server: on a domain controller the virtual account
    the sessions run as is a member of Domain Admins.
#>
[CmdletBinding(SupportsShouldProcess, DefaultParameterSetName = 'Thumbprint')]
param(
    [Parameter(Mandatory)]
    [ValidatePattern('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')]
    [string] $AppId,

    [Parameter(Mandatory, ParameterSetName = 'Thumbprint')]
    [ValidatePattern('^[0-9a-fA-F]{40}$')]
    [string] $CertificateThumbprint,

    [Parameter(Mandatory, ParameterSetName = 'Pfx')]
    [ValidateScript({ Test-Path -LiteralPath $_ -PathType Leaf })]
    [string] $CertificatePath,

    [Parameter(Mandatory, ParameterSetName = 'Pfx')]
    [securestring] $CertificatePassword,

    [Parameter(Mandatory)]
    [ValidatePattern('^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$')]
    [string] $Organization,

    [Parameter(Mandatory)]
    [ValidatePattern('^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)$')]
    [string] $TenantId,

    [Parameter(Mandatory)]
    [ValidatePattern('^[^\\]+\\[^\\]+$')]
    [string] $RunnerGroup,

    [ValidatePattern('^[A-Za-z0-9._-]{1,64}$')]
    [string] $ConfigurationName = 'UnblockRunner',

    [switch] $IncludeActiveDirectory
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3.0

# --- where things go ------------------------------------------------------------------------------

$ModuleName = 'UnblockRunner'
$SourceDir = $PSScriptRoot
$ModuleDir = Join-Path -Path $env:ProgramFiles -ChildPath "WindowsPowerShell\Modules\$ModuleName"
$RoleCapabilityDir = Join-Path -Path $ModuleDir -ChildPath 'RoleCapabilities'
$DataDir = Join-Path -Path $env:ProgramData -ChildPath 'UnblockRunner'
$TranscriptDir = Join-Path -Path $DataDir -ChildPath 'Transcripts'
$ConfigFile = Join-Path -Path $DataDir -ChildPath 'runner.json'
$SessionFile = Join-Path -Path $DataDir -ChildPath "$ConfigurationName.pssc"
$RegisteredHashFile = Join-Path -Path $DataDir -ChildPath "$ConfigurationName.pssc.sha256"

# Placeholders in UnblockRunner.pssc that this script replaces.
$GroupPlaceholder = "'CONTOSO\UnblockService-Runners'"
$TranscriptPlaceholder = "'C:\ProgramData\UnblockRunner\Transcripts'"

$RequiredModules = @(
    'ExchangeOnlineManagement',
    'Microsoft.Graph.Authentication',
    'Microsoft.Graph.Users',
    'Microsoft.Graph.Users.Actions',
    'Microsoft.Graph.Identity.SignIns',
    'Microsoft.Graph.Applications'
)

# --- helpers (they use this script's $PSCmdlet, so -WhatIf and -Confirm apply) --------------------

function Get-TextSha256 {
    param([string] $Text)
    $sha = [System.Security.Cryptography.SHA256]::Create()
    try {
        $bytes = $sha.ComputeHash([System.Text.Encoding]::UTF8.GetBytes($Text))
    }
    finally {
        $sha.Dispose()
    }
    ([System.BitConverter]::ToString($bytes) -replace '-', '').ToLowerInvariant()
}

function Read-SourceFile {
    param([string] $Name)
    $path = Join-Path -Path $SourceDir -ChildPath $Name
    if (-not (Test-Path -LiteralPath $path -PathType Leaf)) {
        throw "$Name is not next to this script ($SourceDir); run it from the ps_scripts folder."
    }
    [System.IO.File]::ReadAllText($path)
}

function Remove-TextRegion {
    # Drops the lines from '#region <Name>' to '#endregion <Name>', both included.
    param([string] $Text, [string] $Name)
    $kept = New-Object -TypeName 'System.Collections.Generic.List[string]'
    $inside = $false
    foreach ($line in ($Text -split "`r?`n")) {
        $trimmed = $line.Trim()
        if ($trimmed -eq "#region $Name") { $inside = $true; continue }
        if ($trimmed -eq "#endregion $Name") { $inside = $false; continue }
        if (-not $inside) { $kept.Add($line) }
    }
    if ($inside) {
        throw "#region $Name has no matching #endregion $Name."
    }
    $kept -join "`r`n"
}

function Set-DirectoryIfMissing {
    param([string] $Path)
    if (Test-Path -LiteralPath $Path -PathType Container) { return }
    if ($PSCmdlet.ShouldProcess($Path, 'Create directory')) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Set-FileIfChanged {
    # Writes UTF-8 (with BOM, which Windows PowerShell 5.1 needs for non-ASCII) only when the
    # content differs; returns whether the file is (or, under -WhatIf, would be) changed.
    param([string] $Path, [string] $Content)
    if ((Test-Path -LiteralPath $Path -PathType Leaf) -and
        ([System.IO.File]::ReadAllText($Path) -ceq $Content)) {
        Write-Verbose "$Path is up to date."
        return $false
    }
    if ($PSCmdlet.ShouldProcess($Path, 'Write file')) {
        [System.IO.File]::WriteAllText($Path, $Content, (New-Object -TypeName 'System.Text.UTF8Encoding' -ArgumentList $true))
    }
    return $true
}

function Set-AdministratorsOnlyAcl {
    # Full control for Administrators and SYSTEM, nothing inherited, nobody else.
    param([string] $Path)
    if (-not (Test-Path -LiteralPath $Path)) {
        # Only under -WhatIf (the directory would have been created): say what would follow.
        if ($WhatIfPreference) { $null = $PSCmdlet.ShouldProcess($Path, 'Restrict access to Administrators and SYSTEM') }
        return
    }
    $wanted = @('S-1-5-18', 'S-1-5-32-544')
    $acl = Get-Acl -LiteralPath $Path
    $rules = @($acl.GetAccessRules($true, $true, [System.Security.Principal.SecurityIdentifier]))
    $current = @($rules | Where-Object {
            $_.AccessControlType -eq 'Allow' -and
            ($_.FileSystemRights -band [System.Security.AccessControl.FileSystemRights]::FullControl) -eq [System.Security.AccessControl.FileSystemRights]::FullControl
        } | ForEach-Object { $_.IdentityReference.Value } | Sort-Object -Unique)
    $isExact = $acl.AreAccessRulesProtected -and $rules.Count -eq $wanted.Count -and
        (($current -join ',') -eq (($wanted | Sort-Object) -join ','))
    if ($isExact) { return }
    if ($PSCmdlet.ShouldProcess($Path, 'Restrict access to Administrators and SYSTEM')) {
        $acl = New-Object -TypeName 'System.Security.AccessControl.DirectorySecurity'
        $acl.SetAccessRuleProtection($true, $false)
        foreach ($sid in $wanted) {
            $rule = New-Object -TypeName 'System.Security.AccessControl.FileSystemAccessRule' -ArgumentList @(
                (New-Object -TypeName 'System.Security.Principal.SecurityIdentifier' -ArgumentList $sid),
                [System.Security.AccessControl.FileSystemRights]::FullControl,
                ([System.Security.AccessControl.InheritanceFlags]::ContainerInherit -bor [System.Security.AccessControl.InheritanceFlags]::ObjectInherit),
                [System.Security.AccessControl.PropagationFlags]::None,
                [System.Security.AccessControl.AccessControlType]::Allow
            )
            $acl.AddAccessRule($rule)
        }
        Set-Acl -LiteralPath $Path -AclObject $acl
    }
}

# --- 1. modules ---------------------------------------------------------------------------------

$missing = @($RequiredModules | Where-Object { -not (Get-Module -ListAvailable -Name $_) })
if ($missing.Count -gt 0) {
    # The PowerShell Gallery requires TLS 1.2, which Windows PowerShell 5.1 may not offer by default.
    [System.Net.ServicePointManager]::SecurityProtocol = [System.Net.ServicePointManager]::SecurityProtocol -bor [System.Net.SecurityProtocolType]::Tls12
    $nuget = Get-PackageProvider -ListAvailable -Name 'NuGet' -ErrorAction SilentlyContinue |
        Where-Object { $_.Version -ge [version]'2.8.5.201' }
    if (-not $nuget -and $PSCmdlet.ShouldProcess('NuGet package provider', 'Install-PackageProvider -Scope AllUsers')) {
        Install-PackageProvider -Name 'NuGet' -MinimumVersion '2.8.5.201' -Scope AllUsers -Force | Out-Null
    }
    foreach ($name in $missing) {
        if ($PSCmdlet.ShouldProcess($name, 'Install-Module -Scope AllUsers from PSGallery')) {
            Install-Module -Name $name -Repository 'PSGallery' -Scope AllUsers -Force
        }
    }
}
else {
    Write-Verbose 'The Exchange Online and Microsoft Graph modules are installed.'
}

if ($IncludeActiveDirectory -and -not (Get-Module -ListAvailable -Name 'ActiveDirectory')) {
    $isWorkstation = (Get-CimInstance -ClassName 'Win32_OperatingSystem').ProductType -eq 1
    if ($isWorkstation) {
        if ($PSCmdlet.ShouldProcess('RSAT Active Directory tools', 'Add-WindowsCapability')) {
            Add-WindowsCapability -Online -Name 'Rsat.ActiveDirectory.DS-LDS.Tools~~~~0.0.1.0' | Out-Null
        }
    }
    elseif ($PSCmdlet.ShouldProcess('RSAT-AD-PowerShell', 'Install-WindowsFeature')) {
        Install-WindowsFeature -Name 'RSAT-AD-PowerShell' | Out-Null
    }
}

# --- 2. certificate -----------------------------------------------------------------------------

if ($PSCmdlet.ParameterSetName -eq 'Pfx') {
    $pfx = Get-PfxData -FilePath $CertificatePath -Password $CertificatePassword
    $CertificateThumbprint = @($pfx.EndEntityCertificates)[0].Thumbprint
    if (Test-Path -LiteralPath "Cert:\LocalMachine\My\$CertificateThumbprint") {
        Write-Verbose "Certificate $CertificateThumbprint is already in LocalMachine\My."
    }
    elseif ($PSCmdlet.ShouldProcess("Cert:\LocalMachine\My ($CertificateThumbprint)", "Import $CertificatePath")) {
        Import-PfxCertificate -FilePath $CertificatePath -CertStoreLocation 'Cert:\LocalMachine\My' -Password $CertificatePassword | Out-Null
    }
}
$CertificateThumbprint = $CertificateThumbprint.ToUpperInvariant()
$certificate = Get-Item -LiteralPath "Cert:\LocalMachine\My\$CertificateThumbprint" -ErrorAction SilentlyContinue
if ($null -eq $certificate) {
    # Under -WhatIf a certificate from -CertificatePath has not been imported: that is expected.
    if (-not ($WhatIfPreference -and $PSCmdlet.ParameterSetName -eq 'Pfx')) {
        throw "Certificate $CertificateThumbprint is not in Cert:\LocalMachine\My."
    }
}
elseif (-not $certificate.HasPrivateKey) {
    throw "Certificate $CertificateThumbprint in Cert:\LocalMachine\My has no private key."
}
elseif ($certificate.NotAfter -lt (Get-Date).AddDays(30)) {
    Write-Warning "Certificate $CertificateThumbprint expires on $($certificate.NotAfter.ToString('u')); renew it and run this script again."
}

# --- 3. module with the role capability ---------------------------------------------------------

$roleCapability = Read-SourceFile -Name 'UnblockRunner.psrc'
if (-not $IncludeActiveDirectory) {
    $roleCapability = Remove-TextRegion -Text $roleCapability -Name 'ActiveDirectory'
}
Set-DirectoryIfMissing -Path $RoleCapabilityDir
# The files a manifest or role capability refers to first, so that a session opened meanwhile
# never finds a reference to a file that is not there yet.
$null = Set-FileIfChanged -Path (Join-Path -Path $ModuleDir -ChildPath 'UnblockRunner.psm1') -Content (Read-SourceFile -Name 'UnblockRunner.psm1')
$null = Set-FileIfChanged -Path (Join-Path -Path $ModuleDir -ChildPath 'Connect-UnblockRunner.ps1') -Content (Read-SourceFile -Name 'Connect-UnblockRunner.ps1')
$null = Set-FileIfChanged -Path (Join-Path -Path $ModuleDir -ChildPath 'UnblockRunner.psd1') -Content (Read-SourceFile -Name 'UnblockRunner.psd1')
$null = Set-FileIfChanged -Path (Join-Path -Path $RoleCapabilityDir -ChildPath 'UnblockRunner.psrc') -Content $roleCapability

# --- 4. machine configuration and transcripts ---------------------------------------------------

Set-DirectoryIfMissing -Path $DataDir
Set-AdministratorsOnlyAcl -Path $DataDir
Set-DirectoryIfMissing -Path $TranscriptDir

$runnerConfig = [ordered]@{
    AppId                 = $AppId
    CertificateThumbprint = $CertificateThumbprint
    Organization          = $Organization
    TenantId              = $TenantId
}
$null = Set-FileIfChanged -Path $ConfigFile -Content (($runnerConfig | ConvertTo-Json) + "`r`n")

# --- 5. session configuration -------------------------------------------------------------------

$session = Read-SourceFile -Name 'UnblockRunner.pssc'
foreach ($placeholder in $GroupPlaceholder, $TranscriptPlaceholder) {
    if (-not $session.Contains($placeholder)) {
        throw "UnblockRunner.pssc no longer contains $placeholder; update this script."
    }
}
$session = $session.Replace($GroupPlaceholder, "'" + $RunnerGroup.Replace("'", "''") + "'")
$session = $session.Replace($TranscriptPlaceholder, "'" + $TranscriptDir.Replace("'", "''") + "'")

# Validate before anything is registered (a scratch copy, so this also works under -WhatIf).
$scratch = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ("UnblockRunner-{0}.pssc" -f [guid]::NewGuid())
try {
    [System.IO.File]::WriteAllText($scratch, $session, (New-Object -TypeName 'System.Text.UTF8Encoding' -ArgumentList $true))
    if (-not (Test-PSSessionConfigurationFile -Path $scratch)) {
        throw 'The generated session configuration is not valid (Test-PSSessionConfigurationFile -Verbose says why).'
    }
}
finally {
    Remove-Item -LiteralPath $scratch -Force -ErrorAction SilentlyContinue
}

$null = Set-FileIfChanged -Path $SessionFile -Content $session
$wantedHash = Get-TextSha256 -Text ("$ConfigurationName`n" + $session)
$registeredHash = if (Test-Path -LiteralPath $RegisteredHashFile -PathType Leaf) {
    ([System.IO.File]::ReadAllText($RegisteredHashFile)).Trim()
}
else { '' }
$existing = Get-PSSessionConfiguration -Name $ConfigurationName -ErrorAction SilentlyContinue

if ($existing -and $registeredHash -eq $wantedHash) {
    Write-Verbose "Session configuration $ConfigurationName is registered and up to date."
}
else {
    $action = if ($existing) { 'Re-register (Unregister- and Register-PSSessionConfiguration)' } else { 'Register-PSSessionConfiguration' }
    if ($PSCmdlet.ShouldProcess($ConfigurationName, "$action from $SessionFile; restarts WinRM")) {
        if ($existing) {
            Unregister-PSSessionConfiguration -Name $ConfigurationName -Force
        }
        Register-PSSessionConfiguration -Path $SessionFile -Name $ConfigurationName -Force | Out-Null
        [System.IO.File]::WriteAllText($RegisteredHashFile, $wantedHash)
    }
}

# --- checks that change nothing -----------------------------------------------------------------

$httpsListener = @(Get-ChildItem -Path 'WSMan:\localhost\Listener' -ErrorAction SilentlyContinue |
        Where-Object { @($_.Keys) -contains 'Transport=HTTPS' })
if ($httpsListener.Count -eq 0) {
    Write-Warning 'WinRM has no HTTPS listener; the service expects one on port 5986 (docs/runner-host.md, "WinRM over HTTPS").'
}

Write-Verbose "Endpoint $ConfigurationName for $RunnerGroup installed; set UNBLOCK_PS_CONFIGURATION_NAME=$ConfigurationName, UNBLOCK_PS_CONNECT_IN_SESSION=false and UNBLOCK_PS_RUNNER_FUNCTIONS=true."
