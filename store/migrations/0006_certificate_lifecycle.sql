-- Certificate lifecycle: renewal supersedes a device's older certificates, revocation is dated,
-- and the revocation list (CRL) of the whole fleet is read through one narrow definer function.
--
-- Same rules as 0001: row-level security stays forced, the application role (fleet_app_role(),
-- 0005) gets only what it needs.

-- When a newer certificate of the same device was issued (renewal). A superseded certificate is
-- refused at admission once the grace period (fleetd configuration) has passed, and is listed in
-- the CRL from then on.
ALTER TABLE public.device_certificates ADD COLUMN superseded_at timestamptz;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT UPDATE (superseded_at) ON public.device_certificates TO %I',
                              public.fleet_app_role());
END $$;

-- When the device was revoked: the revocation date of its certificates in the CRL. NULL for
-- active devices, and for devices revoked before this migration (the CRL then dates their
-- certificates at issuance).
ALTER TABLE public.devices ADD COLUMN revoked_at timestamptz;

-- Every certificate the CRL must list, across tenants: not expired, and either of a revoked
-- device or superseded for longer than `grace`. The CRL is public by design (serials and dates
-- only), so this function returns nothing else: no tenant, no device.
CREATE FUNCTION public.fleet_certificate_revocations(grace interval)
    RETURNS TABLE (serial text, revoked_at timestamptz, superseded boolean)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT c.serial,
               CASE WHEN d.status = 'revoked' THEN COALESCE(d.revoked_at, c.issued_at)
                    ELSE c.superseded_at END,
               d.status <> 'revoked'
          FROM public.device_certificates c
          JOIN public.devices d ON d.tenant_id = c.tenant_id AND d.device_id = c.device_id
         WHERE c.not_after > pg_catalog.now()
           AND (d.status = 'revoked' OR c.superseded_at <= pg_catalog.now() - grace)
         ORDER BY c.serial
    $$;
REVOKE ALL ON FUNCTION public.fleet_certificate_revocations(interval) FROM PUBLIC;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.fleet_certificate_revocations(interval) TO %I',
                              public.fleet_app_role());
END $$;
