# Module manifest of "UnblockRunner", installed by Install-UnblockRunner.ps1 to
# C:\Program Files\WindowsPowerShell\Modules\UnblockRunner\ with:
#   UnblockRunner.psd1                        this file
#   UnblockRunner.psm1                        the two wrappers the endpoint exposes (RootModule)
#   Connect-UnblockRunner.ps1                 signs the session in (ScriptsToProcess below)
#   RoleCapabilities\UnblockRunner.psrc       the JEA role capability
#
# JEA finds role capabilities only in the RoleCapabilities folder of a module. The role
# capability's ModulesToImport imports this module while a JEA session is being built, before JEA
# builds its proxies. Import-Module processes this manifest in this order:
#   1. RequiredModules: ExchangeOnlineManagement (already imported by the role capability).
#   2. ScriptsToProcess: Connect-UnblockRunner.ps1, run in the importer's (the session's) scope,
#      signs in to Exchange Online, which creates the Exchange commands, then to Graph.
#   3. RootModule: UnblockRunner.psm1 defines Set-UnblockUserPassword and Clear-UnblockForwarding
#      in the module's own scope; FunctionsToExport makes them visible to the session, where the
#      role capability can list them.
# So the sign-in still completes, and the wrappers exist, before JEA looks for the commands it
# exposes. The order between 2 and 3 does not matter to the wrappers: they look up Set-Mailbox
# and Update-MgUser by name when they run, not when the .psm1 loads. The sign-in deliberately
# stays in ScriptsToProcess rather than in the .psm1: it keeps its effects at session level, as
# designed, and keeps the module's scope to the two functions.
# Do not add the Microsoft.Graph modules (Authentication, Users, Users.Actions, Identity.SignIns,
# Applications) to RequiredModules: they would be loaded before step 2, i.e. before Exchange
# Online, which is the order that breaks sign-in on Windows PowerShell 5.1 (docs/runner-host.md,
# "Troubleshooting"). The role capability imports them after this module.
@{
    RootModule        = 'UnblockRunner.psm1'
    ModuleVersion     = '1.2.0'
    GUID              = 'caa10261-1ff2-499d-9e29-4dc2794e15ae'
    Author            = 'unblock-service'
    CompanyName       = 'unblock-service'
    Copyright         = '(c) unblock-service. MIT licence.'
    Description       = 'JEA role capability, session sign-in and command wrappers for the unblock-service runner host.'
    PowerShellVersion = '5.1'
    RequiredModules   = @('ExchangeOnlineManagement')
    ScriptsToProcess  = @('Connect-UnblockRunner.ps1')
    FunctionsToExport = @('Set-UnblockUserPassword', 'Clear-UnblockForwarding')
    CmdletsToExport   = @()
    VariablesToExport = @()
    AliasesToExport   = @()
}
