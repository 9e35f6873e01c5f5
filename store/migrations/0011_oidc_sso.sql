-- OIDC single sign-on (issue 13, item 6): each tenant's identity provider, and the sign-in
-- attempts under way.
--
-- Same rules as 0001: tenant_id on every row, row-level security enabled and forced with the one
-- tenant_isolation policy, the application role (fleet_app_role(), 0005) gets only what it needs.

-- One provider per tenant. The client secret is sealed by fleetd (AES-256-GCM under a key kept in
-- its data directory, never in the database; the tenant id is bound in as associated data), so a
-- copy of this table, or of a backup, does not give the secret: 12 bytes of nonce, then the
-- ciphertext and its 16-byte tag.
CREATE TABLE tenant_oidc_providers (
    tenant_id             uuid PRIMARY KEY REFERENCES tenants (tenant_id),
    issuer                text NOT NULL CHECK (length(issuer) BETWEEN 1 AND 2000),
    client_id             text NOT NULL CHECK (length(client_id) BETWEEN 1 AND 500),
    client_secret_sealed  bytea NOT NULL CHECK (length(client_secret_sealed) BETWEEN 29 AND 2100),
    -- [{"claim": "groups", "value": "fleet-admins", "role": "admin"}, ...]: the highest role of
    -- the rules the ID token matches; default_role when none matches (NULL: refused).
    role_mappings         jsonb NOT NULL CHECK (jsonb_typeof(role_mappings) = 'array'),
    default_role          text CHECK (default_role IN ('owner', 'admin', 'operator', 'auditor')),
    -- Lower-case domains whose verified addresses may get a user created at first sign-in.
    allowed_email_domains text[] NOT NULL CHECK (cardinality(allowed_email_domains) <= 64),
    -- Scopes asked for beside `openid email` (e.g. `groups`, which some providers need before
    -- they put group claims in the ID token).
    extra_scopes          text[] NOT NULL CHECK (cardinality(extra_scopes) <= 16),
    enabled               boolean NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- A sign-in attempt between `start` (the redirect to the provider) and `callback`. Only hashes
-- are stored: SHA-256 of the `state` and `nonce` sent to the provider and of the browser-binding
-- cookie. The callback deletes the row it uses (DELETE ... RETURNING), so a state is good once on
-- every fleetd, and the nonce with it.
CREATE TABLE oidc_login_attempts (
    tenant_id    uuid NOT NULL REFERENCES tenants (tenant_id),
    state_hash   bytea NOT NULL CHECK (length(state_hash) = 32),
    nonce_hash   bytea NOT NULL CHECK (length(nonce_hash) = 32),
    browser_hash bytea NOT NULL CHECK (length(browser_hash) = 32),
    redirect_uri text NOT NULL CHECK (length(redirect_uri) BETWEEN 1 AND 2000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, state_hash)
);
CREATE INDEX oidc_login_attempts_by_expiry ON oidc_login_attempts (tenant_id, expires_at);

SELECT public.fleet_secure_tenant_table(t::regclass)
  FROM unnest(ARRAY['tenant_oidc_providers', 'oidc_login_attempts']) AS t;

DO $$
DECLARE
    app name := public.fleet_app_role();
BEGIN
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.tenant_oidc_providers TO %I', app);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON public.oidc_login_attempts TO %I', app);
END
$$;
