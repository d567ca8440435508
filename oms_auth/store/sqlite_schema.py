"""The SQLite store's schema: its migrations, in order.

Each entry of :data:`MIGRATIONS` migrates from version (index) to version (index + 1). The
store records the version it reached (``PRAGMA user_version``) and, at open,
runs the missing ones in one transaction.

Rules: append only, never edit an entry (an existing store must still open and end up exactly
as a new one). Both dialects keep one numbering (version 2 is the audit hash chain on both, 3
the rules under concurrency, 4 API keys, 5 marked mail claims, 6 user locales,
7 username skeletons, 8 accounts per OMS), so the DDL
differs only where the dialects do.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "RECHAIN_AFTER", "SKELETONS_AFTER", "META"]

# Each entry migrates from version (index) to version (index + 1). Append; never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL UNIQUE,
        email TEXT NOT NULL,
        email_verified INTEGER NOT NULL DEFAULT 0,
        oms_id INTEGER NOT NULL,
        account_id INTEGER,
        password_hash TEXT NOT NULL,
        totp_sealed BLOB,
        auth_source TEXT NOT NULL DEFAULT 'native',
        active INTEGER NOT NULL DEFAULT 1,
        master INTEGER NOT NULL DEFAULT 0,
        last_login REAL,
        locked_until REAL,
        created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    );
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        oms_id INTEGER NOT NULL
    );
    CREATE TABLE user_accounts (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        PRIMARY KEY (user_id, account_id)
    );
    CREATE INDEX user_accounts_by_account ON user_accounts(account_id);
    CREATE TABLE user_permissions (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        permission TEXT NOT NULL,
        PRIMARY KEY (user_id, permission)
    );
    CREATE TABLE security_questions (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        question TEXT NOT NULL,
        answer_hash TEXT NOT NULL
    );
    CREATE TABLE sessions (
        digest BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions(user_id);
    CREATE TABLE events (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX events_by_key ON events(kind, key, at);
    CREATE TABLE reset_codes (
        digest BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
    );
    CREATE INDEX reset_codes_by_user ON reset_codes(user_id, state);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        recipient TEXT NOT NULL,
        user_id INTEGER,
        public TEXT NOT NULL,
        sealed BLOB,
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        due_at REAL NOT NULL,
        last_error TEXT,
        sent_at REAL
    );
    CREATE INDEX outbox_due ON outbox(state, due_at);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        actor_id INTEGER,
        target_id INTEGER,
        target_name TEXT,
        source TEXT,
        detail TEXT
    );
    CREATE INDEX audit_by_target ON audit(target_id);
    """,
    # 2: the audit trail becomes a hash chain (rows written before: RECHAIN_AFTER).
    """
    ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT '';
    CREATE INDEX audit_by_time ON audit(at);
    """,
    # 3: rules that hold under concurrency (docs/rules.md,
    # "Concurrency: what holds under bursts and across nodes"). A password version, so a
    # session is only created for the password its check read; the last TOTP time step accepted, so
    # a code is never accepted twice; pending second login steps, counted and bounded in the store.
    # The audit chain is re-computed keyed with the service key (RECHAIN_AFTER).
    """
    ALTER TABLE users ADD COLUMN password_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN totp_last_step INTEGER;
    CREATE TABLE pending_logins (
        digest BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        password_version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX pending_logins_by_user ON pending_logins(user_id);
    """,
    # 4: API keys (docs/rules.md, "API keys"). The secret is held only sealed with the service key;
    # the last accepted nonce is moved on by a compare-and-set in the login's transaction. A session
    # remembers the key it was opened with (such a session cannot change account security); removing
    # the key ends its sessions.
    """
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        permissions TEXT NOT NULL,
        secret_sealed BLOB NOT NULL,
        created_at REAL NOT NULL,
        last_nonce INTEGER NOT NULL DEFAULT -1
    );
    CREATE INDEX api_keys_by_user ON api_keys(user_id);
    ALTER TABLE sessions ADD COLUMN api_key TEXT REFERENCES api_keys(key) ON DELETE CASCADE;
    CREATE INDEX sessions_by_api_key ON sessions(api_key);
    """,
    # 5: a claimed message is marked, so a single node can take back at start what a process that
    # died had claimed, without waiting for its lease (docs/operations.md, "One node on SQLite").
    """
    ALTER TABLE outbox ADD COLUMN claimed INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: the language a user's mail is written in (docs/operations.md, "Branding and languages");
    # none: the default.
    """
    ALTER TABLE users ADD COLUMN locale TEXT;
    """,
    # 7: what a username looks like (records.username_skeleton), so a new name that looks like
    # an existing one is found by an index in the transaction that inserts it. Rows from before
    # are filled in at open (SKELETONS_AFTER).
    """
    ALTER TABLE users ADD COLUMN name_skeleton TEXT;
    CREATE INDEX users_by_skeleton ON users(name_skeleton);
    """,
    # 8: accounts are per OMS (docs/rules.md, "Usernames"): keyed by (OMS,
    # AccountId), so an OMS can never take or block another's; a user's links name its OMS, whose
    # accounts they are. SQLite cannot change a primary key in place: both tables are made anew and
    # the rows copied (the links' OMS is their user's). What the skeletons were computed with
    # (SKELETON_VERSION in records), so the store recomputes them at open when that changes: none
    # recorded yet, so the first open computes them with the full confusables data.
    """
    CREATE TABLE accounts_per_oms (
        oms_id INTEGER NOT NULL,
        id INTEGER NOT NULL,
        PRIMARY KEY (oms_id, id)
    );
    INSERT INTO accounts_per_oms (oms_id, id) SELECT oms_id, id FROM accounts;
    INSERT OR IGNORE INTO accounts_per_oms (oms_id, id)
        SELECT u.oms_id, a.account_id FROM user_accounts a JOIN users u ON u.id = a.user_id;
    CREATE TABLE user_accounts_per_oms (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        oms_id INTEGER NOT NULL,
        account_id INTEGER NOT NULL,
        PRIMARY KEY (user_id, account_id),
        FOREIGN KEY (oms_id, account_id) REFERENCES accounts_per_oms(oms_id, id)
    );
    INSERT INTO user_accounts_per_oms (user_id, oms_id, account_id)
        SELECT a.user_id, u.oms_id, a.account_id
        FROM user_accounts a JOIN users u ON u.id = a.user_id;
    DROP TABLE user_accounts;
    DROP TABLE accounts;
    ALTER TABLE accounts_per_oms RENAME TO accounts;
    ALTER TABLE user_accounts_per_oms RENAME TO user_accounts;
    CREATE INDEX user_accounts_by_account ON user_accounts(oms_id, account_id);
    CREATE TABLE skeleton_version (version TEXT NOT NULL);
    """,
    # 9: recovery codes (docs/rules.md, "Recovery codes"): keyed digests of a user's unused
    # codes, each deleted by the transaction that uses it.
    """
    CREATE TABLE recovery_codes (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        digest BLOB NOT NULL,
        PRIMARY KEY (user_id, digest)
    );
    """,
    # 10: an API key's nonces are random, each accepted once for the key's life (docs/rules.md,
    # "API keys"): every accepted nonce is remembered as its SHA-256 digest, recorded in the
    # transaction that opens the session, and goes with its key. The last accepted nonce is
    # no longer kept.
    """
    CREATE TABLE api_key_nonces (
        key TEXT NOT NULL REFERENCES api_keys(key) ON DELETE CASCADE,
        digest BLOB NOT NULL,
        PRIMARY KEY (key, digest)
    ) WITHOUT ROWID;
    ALTER TABLE api_keys DROP COLUMN last_nonce;
    """,
    # 11: a login attempt's event is marked while its secret is being checked (docs/rules.md,
    # "Fair limits"): a limit full of attempts in flight makes the next one wait, one full of
    # failures refuses it.
    """
    ALTER TABLE events ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0;
    """,
    # 12: sessions and devices a user can see and end (docs/protocol.md, "Sessions and
    # devices"): a session's device and address as its login named them; a user's devices, by
    # their keyed HashCode, with when each was last used, until when it is trusted, and the
    # digest of the emailed code that would trust it (its expiry and the tries used).
    """
    ALTER TABLE sessions ADD COLUMN device_name TEXT;
    ALTER TABLE sessions ADD COLUMN address TEXT;
    CREATE TABLE devices (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        hash_code INTEGER NOT NULL,
        device_name TEXT NOT NULL,
        address TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        trusted_until REAL,
        code_digest BLOB,
        code_expires REAL,
        code_attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, hash_code)
    );
    CREATE INDEX devices_by_hash_code ON devices(hash_code);
    """,
    # 13: every audit row names the key that chained it (docs/operations.md, "Rotating the
    # service key"); rows from before name none and are checked with the ring's legacy key.
    "ALTER TABLE audit ADD COLUMN key_id TEXT",
    # 14: a user's questions and the users of an email found through an index: both are reads
    # by key, which run on the event loop (docs/performance.md, "Reads by key on the event
    # loop"), where a scan of the table would hold every request.
    """
    CREATE INDEX security_questions_by_user ON security_questions(user_id);
    CREATE INDEX users_by_email ON users(oms_id, lower(email));
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# After reaching these versions the store (re-)chains the audit rows written before (2 chained
# them, 3 keyed the chain with the service key); re-chaining is idempotent.
RECHAIN_AFTER: frozenset[int] = frozenset({2, 3})
# After reaching this version the store computes the skeletons of the users written before.
# (From 8 on, it also recomputes every skeleton at open when records.SKELETON_VERSION differs
# from the one it recorded.)
SKELETONS_AFTER = 7

# Where the service key's fingerprint is kept (and what /healthz writes and rolls back): made
# before any migration runs, as on PostgreSQL, because the key is checked before migrating (a
# refused key must not re-chain the audit trail). The schema version stays PRAGMA user_version.
META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
