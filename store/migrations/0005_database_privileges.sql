-- Privileged database paths (issue 11, item 3): the definer functions resolve names only in
-- pg_catalog; nobody but the owner creates objects in `public`; the application role is one per
-- database instead of the server-wide `fleet_app`; only that role may connect; retention gets a
-- definer function of its own so that fleetd can close the owner's pool after start.

-- Before PostgreSQL 15 every role could create in `public`, and databases upgraded from then keep
-- that grant: a role that can create there can shadow a function a definer function calls
-- (CVE-2018-1058). Only the owner creates objects here.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The application role of this database: `fleet_app_<database>`, or `fleet_app_` and 16 hex
-- characters of the name's MD5 when the name is not lower-case letters, digits and underscores
-- or too long for a role name. Roles are cluster-wide, so a role per database keeps one
-- database's role (staging's) out of another (production's). store::connect reads the name from
-- here; nothing else spells it.
CREATE FUNCTION public.fleet_app_role() RETURNS name
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT (CASE WHEN pg_catalog.current_database() ~ '^[a-z0-9_]{1,53}$'
                     THEN 'fleet_app_' || pg_catalog.current_database()
                     ELSE 'fleet_app_' || pg_catalog.left(pg_catalog.md5(pg_catalog.current_database()), 16)
                END)::name
    $$;

-- The role, unless an operator created it beforehand (to give it a password): either way it must
-- have no power beyond the grants below. store::connect re-checks this (and memberships) at start.
DO $$
DECLARE
    app name := public.fleet_app_role();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = app) THEN
        EXECUTE pg_catalog.format(
            'CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION', app);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                WHERE rolname = app AND (rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb)) THEN
        RAISE EXCEPTION 'role % is superuser, BYPASSRLS, CREATEROLE or CREATEDB; fleetplane requires none', app;
    END IF;
END
$$;

-- Every privilege `fleet_app` holds in this database moves to this database's role: table and
-- column privileges (partitions included) and EXECUTE on the definer functions. Read from the
-- catalog so that the grants of 0001-0004 are copied exactly, not restated.
DO $$
DECLARE
    app   name := public.fleet_app_role();
    g     record;
BEGIN
    FOR g IN
        SELECT c.oid::regclass AS relation, a.privilege_type
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.relnamespace = 'public'::regnamespace AND a.grantee = 'fleet_app'::regrole
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %I', g.privilege_type, g.relation, app);
    END LOOP;
    FOR g IN
        SELECT at.attrelid::regclass AS relation, at.attname, a.privilege_type
          FROM pg_catalog.pg_attribute at
          JOIN pg_catalog.pg_class c ON c.oid = at.attrelid, pg_catalog.aclexplode(at.attacl) a
         WHERE c.relnamespace = 'public'::regnamespace AND a.grantee = 'fleet_app'::regrole
    LOOP
        EXECUTE pg_catalog.format('GRANT %s (%I) ON %s TO %I',
                                  g.privilege_type, g.attname, g.relation, app);
    END LOOP;
    FOR g IN
        SELECT p.oid::regprocedure AS function
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.pronamespace = 'public'::regnamespace AND a.grantee = 'fleet_app'::regrole
           AND a.privilege_type = 'EXECUTE'
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', g.function, app);
    END LOOP;
    -- Revoking a table's privileges revokes its column privileges too.
    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM fleet_app;
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM fleet_app;
    REVOKE ALL ON SCHEMA public FROM fleet_app;
    -- Only this database's role connects (the owner, a superuser, always may).
    EXECUTE pg_catalog.format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', pg_catalog.current_database());
    EXECUTE pg_catalog.format('REVOKE ALL ON DATABASE %I FROM fleet_app', pg_catalog.current_database());
    EXECUTE pg_catalog.format('GRANT CONNECT ON DATABASE %I TO %I', pg_catalog.current_database(), app);
END
$$;

-- New partitions are readable by this database's role (0003 granted them to fleet_app).
CREATE OR REPLACE FUNCTION public.fleet_secure_record_partition(t regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    PERFORM public.fleet_secure_tenant_table(t);
    EXECUTE pg_catalog.format('GRANT SELECT ON %s TO %I', t, public.fleet_app_role());
END
$$;

-- The device directory with `cardinality` qualified (0003 left it to the search path).
CREATE OR REPLACE FUNCTION public.fleet_device_directory(device_ids uuid[])
    RETURNS TABLE (device_id uuid, tenant_id uuid, status text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF pg_catalog.cardinality(device_ids) > 1000 THEN
        RAISE EXCEPTION 'fleet_device_directory: at most 1000 ids per call'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN QUERY
        SELECT d.device_id, d.tenant_id, d.status
          FROM public.devices d
         WHERE d.device_id = ANY (device_ids);
END
$$;

-- Retention, which until now listed tenants through the owner's pool: deletes at most
-- `max_rows` records older than their own tenant's retention (or the default), across tenants,
-- and returns how many. It takes no tenant, returns nothing but a count, and can delete only what
-- retention would delete anyway.
CREATE FUNCTION public.fleet_delete_expired_records(max_rows bigint) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    deleted bigint;
BEGIN
    IF max_rows NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 100000, not %', max_rows;
    END IF;
    WITH expired AS (
        SELECT r.tenant_id, r.device_id, r.seq, r.recorded_at
          FROM public.device_records r
          LEFT JOIN public.tenant_ingest_settings s ON s.tenant_id = r.tenant_id
         WHERE r.recorded_at < pg_catalog.now() - pg_catalog.make_interval(days => coalesce(
                   s.record_retention_days, public.fleet_default_record_retention_days()))
         LIMIT max_rows
    )
    DELETE FROM public.device_records r USING expired e
     WHERE r.tenant_id = e.tenant_id AND r.device_id = e.device_id AND r.seq = e.seq
       AND r.recorded_at = e.recorded_at;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;
REVOKE ALL ON FUNCTION public.fleet_delete_expired_records(bigint) FROM PUBLIC;
DO $$
BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.fleet_delete_expired_records(bigint) TO %I',
                              public.fleet_app_role());
END
$$;

-- Every other function that pins a search path resolves names in pg_catalog only: their bodies
-- name public objects with `public.` already, and without `public` on the path nothing created
-- there can be picked up.
ALTER FUNCTION public.fleet_secure_tenant_table(regclass) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.fleet_ensure_record_partitions(integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.fleet_drop_expired_record_partitions(integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.fleet_api_key_locate(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.fleet_tenant_name_taken(text) SET search_path = pg_catalog, pg_temp;
