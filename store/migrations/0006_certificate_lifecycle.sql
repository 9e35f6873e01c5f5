-- Certificate lifecycle: renewal supersedes a device's older certificates, revocation is dated,
-- and the revocation list (CRL) of the whole fleet is read through one narrow definer function.
--
-- Same rules as 0001: row-level security stays forced, fleet_app gets only what it needs.

-- When a newer certificate of the same device was issued (renewal). A superseded certificate is
-- refused at admission once the grace period (fleetd configuration) has passed, and is listed in
-- the CRL from then on.
ALTER TABLE device_certificates ADD COLUMN superseded_at timestamptz;
GRANT UPDATE (superseded_at) ON device_certificates TO fleet_app;

-- When the device was revoked: the revocation date of its certificates in the CRL. NULL for
-- active devices, and for devices revoked before this migration (the CRL then dates their
-- certificates at issuance).
ALTER TABLE devices ADD COLUMN revoked_at timestamptz;

-- Every certificate the CRL must list, across tenants: not expired, and either of a revoked
-- device or superseded for longer than `grace`. The CRL is public by design (serials and dates
-- only), so this function returns nothing else: no tenant, no device.
CREATE FUNCTION fleet_certificate_revocations(grace interval)
    RETURNS TABLE (serial text, revoked_at timestamptz, superseded boolean)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
    AS $$
        SELECT c.serial,
               CASE WHEN d.status = 'revoked' THEN coalesce(d.revoked_at, c.issued_at)
                    ELSE c.superseded_at END,
               d.status <> 'revoked'
          FROM public.device_certificates c
          JOIN public.devices d ON d.tenant_id = c.tenant_id AND d.device_id = c.device_id
         WHERE c.not_after > now()
           AND (d.status = 'revoked' OR c.superseded_at <= now() - grace)
         ORDER BY c.serial
    $$;
REVOKE ALL ON FUNCTION fleet_certificate_revocations(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fleet_certificate_revocations(interval) TO fleet_app;
