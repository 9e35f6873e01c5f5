-- SIEM forwarding of the audit trail (issue 15, item 3): a per-tenant opt-in and, per tenant, how
-- far fleetd's forwarder has delivered the tenant's audit chain to the configured collector.
--
-- Same rules as 0001: tenant_id on every row, row-level security enabled and forced with the one
-- tenant_isolation policy, the application role (fleet_app_role(), 0005) gets only what it needs;
-- the one cross-tenant read is a definer function that pins search_path and answers only ids.

-- Off by default: nothing of a tenant leaves the installation until an owner turns it on
-- (PATCH /v1/tenant, `fleetctl tenant set --siem-forwarding on`, audited as
-- tenant.settings_update).
ALTER TABLE public.tenants ADD COLUMN siem_forwarding boolean NOT NULL DEFAULT false;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT UPDATE (siem_forwarding) ON public.tenants TO %I',
                              public.fleet_app_role());
END $$;

-- The durable cursor: every event of the tenant with seq <= last_forwarded_seq was written and
-- flushed to the collector on a connection that did not fail afterwards within the forwarder's
-- resend window (store::siem). The forwarder moves it back after a connection failure, so the
-- value can decrease; the collector de-duplicates by (tenant, seq).
CREATE TABLE public.siem_cursors (
    tenant_id          uuid PRIMARY KEY REFERENCES public.tenants (tenant_id),
    last_forwarded_seq bigint NOT NULL CHECK (last_forwarded_seq >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

SELECT public.fleet_secure_tenant_table('public.siem_cursors'::regclass);

DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE ON public.siem_cursors TO %I',
                              public.fleet_app_role());
END $$;

-- The tenants that opted in, for the forwarder, which works across tenants: ids only, in a
-- stable order; everything else it reads through a transaction of that one tenant.
CREATE FUNCTION public.fleet_siem_tenants() RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT t.tenant_id FROM public.tenants t WHERE t.siem_forwarding ORDER BY t.tenant_id $$;
REVOKE ALL ON FUNCTION public.fleet_siem_tenants() FROM PUBLIC;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.fleet_siem_tenants() TO %I',
                              public.fleet_app_role());
END $$;
