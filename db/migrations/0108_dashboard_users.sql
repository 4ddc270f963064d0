-- Dashboard users: people of a tenant who log in to the web dashboard (api/dashboard/),
-- with a role, invitations by link, sessions and a lockout after repeated failed logins.
-- Passwords are hashed with argon2 in Python (api/dashboard/passwords.py): only the PHC
-- string reaches the database. Invitation and session tokens are random strings made in
-- Python; only their sha256 is stored, as for API keys. Functions: db/functions/users.sql.

CREATE TABLE core.dashboard_users (
    user_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    -- Lower-cased and trimmed by the functions that write it.
    email           text NOT NULL CONSTRAINT dashboard_users_email_valid
                        CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 254 AND email = lower(email)),
    password_hash   text NOT NULL CONSTRAINT dashboard_users_password_hash_argon2 CHECK (password_hash LIKE '$argon2%'),
    role            text NOT NULL CONSTRAINT dashboard_users_role_valid
                        CHECK (role IN ('admin', 'marketer', 'agent', 'viewer')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,
    last_login_at   timestamptz,
    -- Failed logins counted since failed_since; at dashboard_max_failures the user is
    -- locked until locked_until (core.record_login_failure).
    failed_logins   integer NOT NULL DEFAULT 0,
    failed_since    timestamptz,
    locked_until    timestamptz,
    -- Read by login (api.dashboard_login_users) and the unique e-mail per tenant.
    CONSTRAINT dashboard_users_tenant_email UNIQUE (tenant_id, email)
);
-- Read by login when no tenant is given: the users of an e-mail across tenants.
CREATE INDEX dashboard_users_email ON core.dashboard_users (email);
COMMENT ON TABLE core.dashboard_users IS
    'People who log in to the dashboard: one tenant each, e-mail unique per tenant, argon2 password hash, role (admin, marketer, agent, viewer), lockout state.';

CREATE TABLE core.dashboard_invitations (
    invitation_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES core.tenants ON DELETE CASCADE,
    email           text NOT NULL CONSTRAINT dashboard_invitations_email_valid
                        CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 254 AND email = lower(email)),
    role            text NOT NULL CONSTRAINT dashboard_invitations_role_valid
                        CHECK (role IN ('admin', 'marketer', 'agent', 'viewer')),
    -- sha256 of the link's token; read by api.accept_invitation.
    token_hash      bytea NOT NULL CONSTRAINT dashboard_invitations_token_hash_unique UNIQUE,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    accepted_at     timestamptz,
    revoked_at      timestamptz,
    user_id         bigint REFERENCES core.dashboard_users ON DELETE SET NULL
);
-- Read by the tenant foreign key and the tenant's list of invitations.
CREATE INDEX dashboard_invitations_tenant ON core.dashboard_invitations (tenant_id);
-- Read by the user foreign key.
CREATE INDEX dashboard_invitations_user ON core.dashboard_invitations (user_id);
COMMENT ON TABLE core.dashboard_invitations IS
    'Invitations by link: the sha256 of a random token, the e-mail and role it grants, single use, expiring.';

CREATE TABLE core.dashboard_sessions (
    session_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES core.dashboard_users ON DELETE CASCADE,
    -- sha256 of the cookie's token; read by every dashboard request (api.dashboard_authorize).
    token_hash      bytea NOT NULL CONSTRAINT dashboard_sessions_token_hash_unique UNIQUE,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,
    revoked_at      timestamptz
);
-- Read by the user foreign key and by revoking a user's sessions.
CREATE INDEX dashboard_sessions_user ON core.dashboard_sessions (user_id);
COMMENT ON TABLE core.dashboard_sessions IS
    'Dashboard login sessions: the sha256 of the cookie''s random token, an absolute expiry, revocable (logout, a disabled user).';

-- What each role may do. api.dashboard_authorize checks an action against it; the pages
-- show only the buttons of the actions a session holds.
CREATE TABLE core.dashboard_role_actions (
    role    text NOT NULL CONSTRAINT dashboard_role_actions_role_valid
                CHECK (role IN ('admin', 'marketer', 'agent', 'viewer')),
    action  text NOT NULL,
    PRIMARY KEY (role, action)
);
COMMENT ON TABLE core.dashboard_role_actions IS
    'The dashboard actions each role holds: campaigns.read, campaigns.manage, inbox.read, inbox.reply, inbox.assign, users.manage.';
INSERT INTO core.dashboard_role_actions (role, action) VALUES
    ('admin', 'campaigns.read'), ('admin', 'campaigns.manage'), ('admin', 'inbox.read'), ('admin', 'inbox.reply'),
    ('admin', 'inbox.assign'), ('admin', 'users.manage'),
    ('marketer', 'campaigns.read'), ('marketer', 'campaigns.manage'), ('marketer', 'inbox.read'),
    ('agent', 'inbox.read'), ('agent', 'inbox.reply'),
    ('viewer', 'campaigns.read'), ('viewer', 'inbox.read');

ALTER TABLE core.settings
    ADD COLUMN dashboard_max_failures integer NOT NULL DEFAULT 5
        CONSTRAINT settings_dashboard_max_failures_valid CHECK (dashboard_max_failures BETWEEN 1 AND 100),
    ADD COLUMN dashboard_failure_window interval NOT NULL DEFAULT '15 minutes',
    ADD COLUMN dashboard_lockout interval NOT NULL DEFAULT '15 minutes',
    ADD COLUMN dashboard_session_ttl interval NOT NULL DEFAULT '12 hours',
    ADD COLUMN dashboard_invitation_ttl interval NOT NULL DEFAULT '7 days',
    -- The key the dashboard signs its cookies and derives CSRF tokens with: one per
    -- database, so that every API process (and a restarted one) agrees on it.
    ADD COLUMN dashboard_cookie_key bytea NOT NULL
        DEFAULT decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');

INSERT INTO core.error_codes (sqlstate, name, http_status, meaning) VALUES
    ('PW260', 'user_not_found',       404, 'No such dashboard user (or invitation) for this tenant.'),
    ('PW460', 'account_locked',       429, 'Too many failed logins: the dashboard user is locked out for a while.');

CREATE TYPE api.dashboard_user AS (
    user_id         bigint,
    tenant_id       bigint,
    email           text,
    role            text,
    created_at      timestamptz,
    disabled_at     timestamptz,
    last_login_at   timestamptz,
    locked_until    timestamptz
);

-- What login needs to check a password in Python: never returned by anything else.
CREATE TYPE api.dashboard_login_user AS (
    user_id         bigint,
    tenant_id       bigint,
    password_hash   text
);

CREATE TYPE api.dashboard_session AS (
    session_id      bigint,
    tenant_id       bigint,
    tenant_name     text,
    user_id         bigint,
    email           text,
    role            text,
    actions         text[],
    expires_at      timestamptz
);

CREATE TYPE api.dashboard_invitation AS (
    invitation_id   bigint,
    tenant_id       bigint,
    email           text,
    role            text,
    created_at      timestamptz,
    expires_at      timestamptz,
    accepted_at     timestamptz,
    revoked_at      timestamptz
);
