# Module manifest of "UnblockRunner", installed by Install-UnblockRunner.ps1 to
# C:\Program Files\WindowsPowerShell\Modules\UnblockRunner\ with:
#   UnblockRunner.psd1                        this file
#   Connect-UnblockRunner.ps1                 signs the session in (ScriptsToProcess below)
#   RoleCapabilities\UnblockRunner.psrc       the JEA role capability
#
# JEA finds role capabilities only in the RoleCapabilities folder of a module. Importing this
# module (the role capability's ModulesToImport does, while a JEA session is being built) runs
# Connect-UnblockRunner.ps1. The module exports nothing.
@{
    ModuleVersion     = '1.0.0'
    GUID              = 'caa10261-1ff2-499d-9e29-4dc2794e15ae'
    Author            = 'unblock-service'
    CompanyName       = 'unblock-service'
    Copyright         = '(c) unblock-service. MIT licence.'
    Description       = 'JEA role capability and session sign-in for the unblock-service runner host.'
    PowerShellVersion = '5.1'
    RequiredModules   = @('ExchangeOnlineManagement')
    ScriptsToProcess  = @('Connect-UnblockRunner.ps1')
    FunctionsToExport = @()
    CmdletsToExport   = @()
    VariablesToExport = @()
    AliasesToExport   = @()
}
