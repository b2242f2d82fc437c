"""No user value ever becomes PowerShell script text.

The bridge binds values as parameters of named commands. This test reads every module of
``service/`` and fails on any ``add_script`` call whose argument is not a constant script
shipped in ``ps_scripts/``, and on any command name built from text at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {p.name for p in (ROOT / "ps_scripts").glob("*.ps1")}


def _is_shipped_script(node: ast.expr) -> bool:
    """`shipped_script("Name.ps1")` with a literal name of a file in ps_scripts/."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name | ast.Attribute)
        and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) == "shipped_script"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value in SHIPPED
    )


def _built_text(node: ast.expr) -> bool:
    """Text assembled at run time: f-strings, concatenation, % or .format()."""
    if isinstance(node, ast.JoinedStr | ast.BinOp):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in {"format", "join"}


def violations(source: str, filename: str = "<string>") -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        where = f"{filename}:{node.lineno}"
        if node.func.attr == "add_script" and not (node.args and _is_shipped_script(node.args[0])):
            found.append(f"{where}: add_script with something other than a shipped script")
        if node.func.attr in {"add_cmdlet", "add_command"} and node.args and _built_text(node.args[0]):
            found.append(f"{where}: {node.func.attr} with a command name built from text")
    return found


def test_service_never_builds_script_text() -> None:
    """Every module under service/: no add_script with built text, no built command names."""
    problems: list[str] = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        problems += violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert problems == []


def test_the_scanner_catches_what_it_looks_for() -> None:
    """Negative control: the patterns an injection would need are reported."""
    bad = """
ps.add_script(f"Remove-BlockedSenderAddress -SenderAddress {address}")
ps.add_script("Get-BlockedSenderAddress -SenderAddress " + address)
ps.add_script(template.format(address))
ps.add_cmdlet(f"Remove-{noun}")
ps.add_script(shipped_script("Not-Shipped.ps1"))
"""
    assert len(violations(bad)) == 5
    good = """
ps.add_cmdlet(invocation.name).add_parameter("SenderAddress", address)
"""
    assert violations(good) == []
