"""Command implementations behind the `fabstir-tui` CLI; each returns an exit code."""
