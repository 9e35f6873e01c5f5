-- The compliance evidence report (issue 15) shows the last backup verification to a tenant's
-- owners, admins and auditors. backup_verifications has no grant to the application role (it is
-- operational and its `checks` name every tenant), and a running fleetd holds no owner
-- connection. This function hands the application role the newest verification's summary
-- columns only: no per-tenant checks, no detail text.
CREATE FUNCTION public.fleet_last_backup_verification()
    RETURNS TABLE (verified_at timestamptz, file_name text, backup_created_at timestamptz,
                   dump_sha256 text, verified boolean)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT v.verified_at, v.file_name, v.backup_created_at, v.dump_sha256, v.verified
          FROM public.backup_verifications v
         ORDER BY v.verified_at DESC, v.verification_id DESC
         LIMIT 1
    $$;
REVOKE ALL ON FUNCTION public.fleet_last_backup_verification() FROM PUBLIC;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.fleet_last_backup_verification() TO %I',
                              public.fleet_app_role());
END $$;
