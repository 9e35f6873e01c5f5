-- Per-tenant connection quota (issue 11, item 1): the most device sessions a tenant may hold
-- on one gateway (fleetd instance). The gateway reads it at every admission; a device replacing
-- its own live session is never refused by it. Changed through PATCH /v1/tenant, audited as
-- tenant.settings_update.
--
-- Same rules as 0001: row-level security stays forced, the application role (fleet_app_role(),
-- 0005) gets only what it needs.
ALTER TABLE public.tenants
    ADD COLUMN max_device_connections integer NOT NULL DEFAULT 100000
        CHECK (max_device_connections BETWEEN 1 AND 10000000);
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT UPDATE (max_device_connections) ON public.tenants TO %I',
                              public.fleet_app_role());
END $$;
