"""powershell."""
