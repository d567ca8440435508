"""The rules, with no transport: sessions and logins, and the shared password-reset engine."""
