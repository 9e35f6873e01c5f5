-- People (issue 13): users of a tenant with the roles and group scopes of API keys, their
-- second factor and recovery codes, invitations, sessions, and the failed sign-ins counted per
-- account.
--
-- Same rules as 0001 and 0005: every table has tenant_id, row-level security enabled and forced
-- with the one tenant_isolation policy (fleet_secure_tenant_table), and the application role
-- (fleet_app_role()) gets only the privileges it needs. No secret is stored in clear:
--
-- | secret              | stored as                                                        |
-- |---------------------|------------------------------------------------------------------|
-- | password            | argon2id PHC string (store::credentials: m = 64 MiB, t = 2, p = 1) |
-- | TOTP secret         | sealed with ChaCha20-Poly1305 under a key kept outside the database (api::people::totp) |
-- | recovery code       | SHA-256 (the codes are 80 random bits each)                      |
-- | invitation token    | SHA-256 (256 random bits)                                        |
-- | session id          | SHA-256 (256 random bits); the CSRF token is derived from the id, not stored |

-- Session lifetimes and the second factor for everyone, per tenant (PATCH /v1/tenant).
ALTER TABLE public.tenants
    ADD COLUMN session_idle_timeout_secs integer NOT NULL DEFAULT 28800
        CHECK (session_idle_timeout_secs BETWEEN 60 AND 2592000),
    ADD COLUMN session_absolute_timeout_secs integer NOT NULL DEFAULT 2592000
        CHECK (session_absolute_timeout_secs BETWEEN 300 AND 31536000),
    ADD COLUMN totp_required_for_all boolean NOT NULL DEFAULT false;

-- Emails are stored lower-cased, so (tenant_id, email) is unique ignoring case.
CREATE TABLE public.users (
    tenant_id           uuid NOT NULL REFERENCES public.tenants (tenant_id),
    user_id             uuid NOT NULL,
    email               text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    role                text NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'auditor')),
    -- NULL: every group. Otherwise the ids of the groups the user may see and act on.
    group_scope         uuid[] CHECK (group_scope IS NULL OR cardinality(group_scope) BETWEEN 1 AND 64),
    -- NULL until the user sets one (an invitation accepted, or single sign-on only).
    password_hash       text CHECK (password_hash IS NULL OR password_hash LIKE '$argon2id$%'),
    -- The confirmed TOTP secret, sealed; the one being enrolled (shown once, not yet confirmed).
    totp_sealed         bytea,
    totp_pending_sealed bytea,
    totp_enabled_at     timestamptz,
    -- The last 30-second step whose code was accepted: a code is never accepted twice.
    totp_last_step      bigint,
    created_at          timestamptz NOT NULL,
    created_by          text NOT NULL,
    disabled_at         timestamptz,
    PRIMARY KEY (tenant_id, user_id),
    UNIQUE (user_id),
    UNIQUE (tenant_id, email),
    CHECK ((totp_sealed IS NULL) = (totp_enabled_at IS NULL))
);

CREATE TABLE public.user_recovery_codes (
    tenant_id   uuid NOT NULL,
    user_id     uuid NOT NULL,
    code_sha256 bytea NOT NULL CHECK (length(code_sha256) = 32),
    used_at     timestamptz,
    PRIMARY KEY (tenant_id, user_id, code_sha256),
    FOREIGN KEY (tenant_id, user_id) REFERENCES public.users (tenant_id, user_id) ON DELETE CASCADE
);

CREATE TABLE public.user_invitations (
    tenant_id     uuid NOT NULL REFERENCES public.tenants (tenant_id),
    invitation_id uuid NOT NULL,
    email         text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    role          text NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'auditor')),
    group_scope   uuid[] CHECK (group_scope IS NULL OR cardinality(group_scope) BETWEEN 1 AND 64),
    token_sha256  bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    created_at    timestamptz NOT NULL,
    created_by    text NOT NULL,
    expires_at    timestamptz NOT NULL,
    accepted_at   timestamptz,
    PRIMARY KEY (tenant_id, invitation_id)
);

-- A session row is either signed in (`full`) or half-way through sign-in: the password was
-- right and the second factor (`second_factor`) or TOTP enrolment (`enrol_totp`) is next.
CREATE TABLE public.user_sessions (
    tenant_id      uuid NOT NULL,
    session_sha256 bytea NOT NULL UNIQUE CHECK (length(session_sha256) = 32),
    user_id        uuid NOT NULL,
    stage          text NOT NULL CHECK (stage IN ('full', 'second_factor', 'enrol_totp')),
    created_at     timestamptz NOT NULL,
    last_used_at   timestamptz NOT NULL,
    address        inet,
    user_agent     text CHECK (length(user_agent) <= 512),
    PRIMARY KEY (tenant_id, session_sha256),
    FOREIGN KEY (tenant_id, user_id) REFERENCES public.users (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX user_sessions_by_user ON public.user_sessions (tenant_id, user_id);

-- Failed sign-ins per attempted email (known or not, so both are limited alike) in a window.
CREATE TABLE public.sign_in_failures (
    tenant_id         uuid NOT NULL REFERENCES public.tenants (tenant_id),
    email             text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 1 AND 254),
    window_started_at timestamptz NOT NULL,
    failures          integer NOT NULL CHECK (failures >= 0),
    PRIMARY KEY (tenant_id, email)
);

DO $$
DECLARE
    t   text;
    app name := public.fleet_app_role();
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'user_recovery_codes', 'user_invitations', 'user_sessions',
                             'sign_in_failures'] LOOP
        PERFORM public.fleet_secure_tenant_table(('public.' || t)::regclass);
    END LOOP;
    EXECUTE pg_catalog.format('GRANT UPDATE (session_idle_timeout_secs, session_absolute_timeout_secs,
                               totp_required_for_all) ON public.tenants TO %I', app);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON public.users TO %I', app);
    EXECUTE pg_catalog.format('GRANT UPDATE (role, group_scope, password_hash, totp_sealed,
                               totp_pending_sealed, totp_enabled_at, totp_last_step, disabled_at)
                               ON public.users TO %I', app);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON public.user_recovery_codes TO %I', app);
    EXECUTE pg_catalog.format('GRANT UPDATE (used_at) ON public.user_recovery_codes TO %I', app);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT ON public.user_invitations TO %I', app);
    EXECUTE pg_catalog.format('GRANT UPDATE (accepted_at, expires_at) ON public.user_invitations TO %I', app);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON public.user_sessions TO %I', app);
    EXECUTE pg_catalog.format('GRANT UPDATE (stage, last_used_at) ON public.user_sessions TO %I', app);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.sign_in_failures TO %I', app);
END
$$;

-- The tenant of a name, for sign-in, which learns the tenant only from what the person types.
-- Answers for one name with the id only: it cannot list tenants.
CREATE FUNCTION public.fleet_tenant_by_name(candidate text) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT t.tenant_id FROM public.tenants t WHERE lower(t.name) = lower(candidate) LIMIT 1 $$;
REVOKE ALL ON FUNCTION public.fleet_tenant_by_name(text) FROM PUBLIC;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.fleet_tenant_by_name(text) TO %I',
                              public.fleet_app_role());
END $$;
