-- Management: device groups as rows of their own, API keys, and the notification that tells
-- every fleetd when a key changes.
--
-- Same rules as 0001: every table has tenant_id, row-level security enabled and forced with the
-- one tenant_isolation policy, fleet_app gets only the privileges it needs, and the one
-- SECURITY DEFINER function pins search_path, schema-qualifies every name and answers only for
-- the value it is given.

-- Device groups. Devices and enrollment tokens name their group; the foreign keys below make the
-- name real (a group with devices cannot be deleted) and carry a rename to every row
-- (ON UPDATE CASCADE; referential actions bypass row-level security, as the owner's do).
-- Group-scoped API keys store group ids, so a rename never widens or narrows a key.
CREATE TABLE device_groups (
    tenant_id  uuid NOT NULL REFERENCES tenants (tenant_id),
    group_id   uuid NOT NULL,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, group_id),
    UNIQUE (tenant_id, name)
);

-- Every group already named by a device or a token, and every tenant's `default`.
INSERT INTO device_groups (tenant_id, group_id, name)
SELECT tenant_id, gen_random_uuid(), name
  FROM (SELECT tenant_id, 'default' AS name FROM tenants
        UNION SELECT tenant_id, device_group FROM devices
        UNION SELECT tenant_id, device_group FROM enrollment_tokens) AS named;

ALTER TABLE devices
    ADD FOREIGN KEY (tenant_id, device_group) REFERENCES device_groups (tenant_id, name)
        ON UPDATE CASCADE;
ALTER TABLE enrollment_tokens
    ADD FOREIGN KEY (tenant_id, device_group) REFERENCES device_groups (tenant_id, name)
        ON UPDATE CASCADE;
CREATE INDEX devices_by_group ON devices (tenant_id, device_group, device_id);

-- API keys. The key text is `fpk_<env>_<public id>_<secret><checksum>` (store::api_keys); only
-- the public id, an argon2id hash of the secret and a fingerprint (16 hex characters of a
-- SHA-256 of the whole key, for the lookup) are stored, and none of them rebuilds the key.
-- Role, scope, expiry, CIDRs and origins never change after creation: a different key is a new
-- key. Keys are revoked, never deleted (the audit trail points at them).
CREATE TABLE api_keys (
    tenant_id     uuid NOT NULL REFERENCES tenants (tenant_id),
    key_id        text NOT NULL CHECK (key_id ~ '^[0-9A-Za-z]{12}$'),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'auditor')),
    -- NULL: every group. Otherwise the ids of the groups the key may see and act on.
    group_scope   uuid[] CHECK (group_scope IS NULL OR cardinality(group_scope) BETWEEN 1 AND 64),
    expires_at    timestamptz,
    -- NULL: from anywhere.
    allowed_cidrs cidr[] CHECK (allowed_cidrs IS NULL OR cardinality(allowed_cidrs) BETWEEN 1 AND 64),
    cors_origins  text[] CHECK (cors_origins IS NULL OR cardinality(cors_origins) BETWEEN 1 AND 16),
    secret_hash   text NOT NULL CHECK (secret_hash LIKE '$argon2id$%'),
    fingerprint   text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{16}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    revoked_at    timestamptz,
    revoked_by    text,
    last_used_at  timestamptz,
    last_used_ip  inet,
    PRIMARY KEY (tenant_id, key_id),
    UNIQUE (key_id),
    UNIQUE (fingerprint),
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['device_groups', 'api_keys'] LOOP
        PERFORM fleet_secure_tenant_table(t::regclass);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, DELETE ON device_groups TO fleet_app;
GRANT UPDATE (name) ON device_groups TO fleet_app;
GRANT SELECT, INSERT ON api_keys TO fleet_app;
GRANT UPDATE (revoked_at, revoked_by, last_used_at, last_used_ip) ON api_keys TO fleet_app;

-- Where a presented key lives, for authentication, which learns the tenant only from the key.
-- Answers for one fingerprint (computed from the whole presented key, so it cannot be guessed
-- without the key) with the tenant and key id only: it cannot list keys, and never returns the
-- hash, which the caller then reads under row-level security in that tenant's transaction.
CREATE FUNCTION fleet_api_key_locate(key_fingerprint text)
    RETURNS TABLE (tenant_id uuid, key_id text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
    AS $$
        SELECT k.tenant_id, k.key_id FROM public.api_keys k WHERE k.fingerprint = key_fingerprint
    $$;
REVOKE ALL ON FUNCTION fleet_api_key_locate(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fleet_api_key_locate(text) TO fleet_app;

-- Tenant names are one namespace for the whole installation (chosen at bootstrap; `fleetctl
-- --tenant NAME` must be unambiguous). The check crosses tenants, so it is a definer function
-- that answers yes or no for one name and nothing else. (A unique index on lower(name) would
-- refuse installations that already hold duplicates; new duplicates are refused here.)
CREATE FUNCTION fleet_tenant_name_taken(candidate text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
    AS $$ SELECT EXISTS (SELECT 1 FROM public.tenants t WHERE lower(t.name) = lower(candidate)) $$;
REVOKE ALL ON FUNCTION fleet_tenant_name_taken(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fleet_tenant_name_taken(text) TO fleet_app;
GRANT UPDATE (name) ON tenants TO fleet_app;
