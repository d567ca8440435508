"""Mail: the durable outbox worker, message templates, and the transports (Maildir, SMTP)."""
