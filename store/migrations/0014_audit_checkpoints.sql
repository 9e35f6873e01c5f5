-- Signed audit checkpoints (issue 15, item 1). The chain of 0001 is plain SHA-256 in the database
-- it protects: whoever can write the database can rewrite an event and every later hash. A
-- checkpoint is fleetd's Ed25519 signature (store::audit_checkpoints) over a tenant's chain up to
-- `seq`, with the hash of every event it covers, so a verifier holding the public key names the
-- first rewritten event, a cut tail or a rewound head. The signing key is not in the database;
-- each checkpoint is also written to a directory outside it. Rows here are a convenience copy
-- (listing, exports): a superuser can remove them, which the pushed files make visible.
--
-- Same rules as 0001: tenant_id on every row, row-level security forced with the one
-- tenant_isolation policy, append-only by trigger, the application role may only read and insert.
CREATE TABLE public.audit_checkpoints (
    tenant_id       uuid NOT NULL REFERENCES public.tenants (tenant_id),
    -- The last event seq covered.
    seq             bigint NOT NULL CHECK (seq >= 1),
    -- The first event seq covered: the previous checkpoint's seq + 1 (1 for the first).
    first_seq       bigint NOT NULL CHECK (first_seq BETWEEN 1 AND seq),
    last_hash       bytea NOT NULL CHECK (length(last_hash) = 32),
    -- The hashes of events first_seq..seq, concatenated, 32 bytes each.
    event_hashes    bytea NOT NULL CHECK (length(event_hashes) = 32 * (seq - first_seq + 1)),
    created_at      timestamptz NOT NULL,
    -- Lowercase hex SHA-256 of the raw 32-byte Ed25519 public key.
    key_fingerprint text NOT NULL CHECK (key_fingerprint ~ '^[0-9a-f]{64}$'),
    signature       bytea NOT NULL CHECK (length(signature) = 64),
    PRIMARY KEY (tenant_id, seq)
);

CREATE FUNCTION public.audit_checkpoints_refuse_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RAISE EXCEPTION 'audit_checkpoints is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_checkpoints_append_only_rows
    BEFORE UPDATE OR DELETE ON public.audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION public.audit_checkpoints_refuse_change();

CREATE TRIGGER audit_checkpoints_append_only_truncate
    BEFORE TRUNCATE ON public.audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION public.audit_checkpoints_refuse_change();

SELECT public.fleet_secure_tenant_table('public.audit_checkpoints'::regclass);

DO $$
BEGIN
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT ON public.audit_checkpoints TO %I',
                              public.fleet_app_role());
END
$$;

-- The tenants whose chain has events after their last checkpoint, for fleetd's checkpoint task,
-- which works in one tenant's transaction at a time and cannot list tenants (RLS). Returns tenant
-- ids only, at most `max_tenants`; what a tenant's checkpoint holds is read under its own policy.
CREATE FUNCTION public.fleet_audit_checkpoints_due(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF max_tenants NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_tenants must be between 1 and 100000, not %', max_tenants;
    END IF;
    RETURN QUERY
        SELECT h.tenant_id
          FROM public.audit_chain_heads h
         WHERE h.last_seq > coalesce((SELECT max(c.seq) FROM public.audit_checkpoints c
                                       WHERE c.tenant_id = h.tenant_id), 0)
         ORDER BY h.tenant_id
         LIMIT max_tenants;
END
$$;
REVOKE ALL ON FUNCTION public.fleet_audit_checkpoints_due(integer) FROM PUBLIC;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.fleet_audit_checkpoints_due(integer) TO %I',
                              public.fleet_app_role());
END $$;
