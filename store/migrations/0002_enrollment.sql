-- Enrollment: tokens that let a device obtain its first certificate, and the record of every
-- device certificate issued.
--
-- Same rules as 0001: every table has tenant_id, row-level security enabled and forced with the
-- one tenant_isolation policy, and fleet_app gets only the privileges it needs.

CREATE TABLE enrollment_tokens (
    tenant_id     uuid NOT NULL REFERENCES tenants (tenant_id),
    token_id      uuid NOT NULL,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- PHC string of the argon2id hash of the 32-byte secret. The secret itself is never stored.
    secret_hash   text NOT NULL CHECK (secret_hash LIKE '$argon2id$%'),
    -- Where enrollments may come from. Never empty: "anywhere" is an explicit 0.0.0.0/0 or ::/0.
    allowed_cidrs cidr[] NOT NULL CHECK (cardinality(allowed_cidrs) >= 1),
    daily_limit   integer NOT NULL CHECK (daily_limit >= 1),
    max_uses      bigint CHECK (max_uses IS NULL OR max_uses >= 1),
    expires_at    timestamptz NOT NULL,
    device_group  text NOT NULL CHECK (length(device_group) BETWEEN 1 AND 200),
    device_labels jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(device_labels) = 'object'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    revoked_at    timestamptz,
    revoked_by    text,
    -- Usage. `used_today` counts enrollments of the UTC day `used_day`; a new day starts at 1.
    uses          bigint NOT NULL DEFAULT 0 CHECK (uses >= 0),
    used_day      date,
    used_today    integer NOT NULL DEFAULT 0 CHECK (used_today >= 0),
    last_used_at  timestamptz,
    PRIMARY KEY (tenant_id, token_id),
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);

-- Every device certificate the issuing CA signed: for operators (what is out there, until when)
-- and for a future revocation list keyed by serial.
CREATE TABLE device_certificates (
    tenant_id           uuid NOT NULL REFERENCES tenants (tenant_id),
    serial              text NOT NULL CHECK (serial ~ '^[0-9a-f]{2,40}$'),
    device_id           uuid NOT NULL,
    not_before          timestamptz NOT NULL,
    not_after           timestamptz NOT NULL CHECK (not_after > not_before),
    issued_at           timestamptz NOT NULL DEFAULT now(),
    enrollment_token_id uuid,
    PRIMARY KEY (tenant_id, serial),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, enrollment_token_id) REFERENCES enrollment_tokens (tenant_id, token_id)
);

CREATE INDEX device_certificates_by_device ON device_certificates (tenant_id, device_id, not_after);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['enrollment_tokens', 'device_certificates'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I
                 USING (tenant_id = fleet_current_tenant())
                 WITH CHECK (tenant_id = fleet_current_tenant())', t);
    END LOOP;
END
$$;

-- Tokens are created, read, counted and revoked; never deleted by the application (their rows
-- are what device_certificates and the audit trail point at).
GRANT SELECT, INSERT ON enrollment_tokens TO fleet_app;
GRANT UPDATE (uses, used_day, used_today, last_used_at, revoked_at, revoked_by)
    ON enrollment_tokens TO fleet_app;
-- Certificates are recorded once and read; deleting a device removes them by cascade (which
-- runs with the privileges of the table owner, not fleet_app's).
GRANT SELECT, INSERT ON device_certificates TO fleet_app;
