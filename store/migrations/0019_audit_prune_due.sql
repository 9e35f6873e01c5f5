-- The tenants whose audit retention may let fleet_audit_prune (0017) remove something, for
-- fleetd's daily prune task, which works in one tenant's transaction at a time and cannot list
-- tenants (RLS): the oldest remaining event is older than the tenant's retention and a signed
-- checkpoint lies after its anchor. Returns tenant ids only, at most `max_tenants`; whether a
-- checkpoint is old enough to prune behind is decided under the tenant's own policy by
-- fleet_audit_prune itself.
CREATE FUNCTION public.fleet_audit_prune_due(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF max_tenants NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_tenants must be between 1 and 100000, not %', max_tenants;
    END IF;
    RETURN QUERY
        SELECT t.tenant_id
          FROM public.tenants t
         WHERE (SELECT e.occurred_at FROM public.audit_events e
                 WHERE e.tenant_id = t.tenant_id ORDER BY e.seq LIMIT 1)
               < pg_catalog.now() - pg_catalog.make_interval(days => t.audit_retention_days)
           AND EXISTS (SELECT 1 FROM public.audit_checkpoints c
                        WHERE c.tenant_id = t.tenant_id
                          AND c.seq > coalesce((SELECT a.seq FROM public.audit_chain_anchors a
                                                 WHERE a.tenant_id = t.tenant_id), 0))
         ORDER BY t.tenant_id
         LIMIT max_tenants;
END
$$;
REVOKE ALL ON FUNCTION public.fleet_audit_prune_due(integer) FROM PUBLIC;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.fleet_audit_prune_due(integer) TO %I',
                              public.fleet_app_role());
END $$;
