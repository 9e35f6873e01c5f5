-- Ingest: the record ledger (time-partitioned), per-device ingest state (ack watermark, reject
-- counters), the patch inventory with its history, per-tenant retention, the device directory
-- ingest resolves tenants with, and the partition maintenance functions.
--
-- Same rules as 0001: every table has tenant_id, row-level security enabled and forced with the
-- one tenant_isolation policy (partitions included), fleet_app gets only what it needs. The few
-- functions fleet_app may call with the owner's rights are SECURITY DEFINER, pin search_path,
-- schema-qualify every name and are granted to fleet_app alone.

-- Per-tenant ingest settings. A tenant without a row gets the defaults.
CREATE FUNCTION fleet_default_record_retention_days() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT 30 $$;

CREATE TABLE tenant_ingest_settings (
    tenant_id             uuid PRIMARY KEY REFERENCES tenants (tenant_id),
    record_retention_days integer NOT NULL DEFAULT fleet_default_record_retention_days()
                          CHECK (record_retention_days BETWEEN 1 AND 3650),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- The ledger: every accepted record of every kind, once per (tenant, device, seq).
--
-- Partitioned by the device's clock (recorded_at), weekly, UTC. A replay carries the same
-- recorded_at, so it lands in the same partition and the primary key (which must include the
-- partition key) still refuses it. Records whose week has no partition (a device clock far off)
-- go to the default partition; creating that week's partition later moves them over.
-- No foreign key to devices: it would cost a lookup per row on the hot path; the ledger is history
-- and retention clears it.
CREATE TABLE device_records (
    tenant_id   uuid NOT NULL,
    device_id   uuid NOT NULL,
    seq         bigint NOT NULL CHECK (seq >= 1),
    recorded_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('telemetry', 'patch_status', 'event')),
    -- The record's body as CBOR ({kind: payload}), exactly as wire encodes it.
    body        bytea NOT NULL,
    PRIMARY KEY (tenant_id, device_id, seq, recorded_at)
) PARTITION BY RANGE (recorded_at);

CREATE TABLE device_records_default PARTITION OF device_records DEFAULT;

-- Per device: the ack watermark and what ingest refused.
--
-- watermark: every seq in (0, watermark] is committed, refused for good, or declared lost by the
-- agent. pending_ranges: the handled ranges above the watermark as flat pairs
-- [from1, to1, from2, to2, ...] (sorted, disjoint, inclusive), so the watermark can jump once a
-- hole below them fills. rejects: counters by reason.
CREATE TABLE device_ingest_state (
    tenant_id         uuid NOT NULL,
    device_id         uuid NOT NULL,
    watermark         bigint NOT NULL DEFAULT 0 CHECK (watermark >= 0),
    pending_ranges    bigint[] NOT NULL DEFAULT '{}' CHECK (cardinality(pending_ranges) % 2 = 0),
    records_committed bigint NOT NULL DEFAULT 0 CHECK (records_committed >= 0),
    rejects           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(rejects) = 'object'),
    last_error        text CHECK (length(last_error) <= 1000),
    last_error_reason text,
    last_error_at     timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id) ON DELETE CASCADE
);

-- The current patch state of each device (from its newest report) ...
CREATE TABLE device_patch_status (
    tenant_id                 uuid NOT NULL,
    device_id                 uuid NOT NULL,
    seq                       bigint NOT NULL,
    recorded_at               timestamptz NOT NULL,
    received_at               timestamptz NOT NULL,
    os_id                     text NOT NULL,
    os_version                text NOT NULL,
    package_manager           text NOT NULL,
    reboot_required           boolean NOT NULL,
    lists_refreshed_at        timestamptz,
    package_count             integer NOT NULL,
    upgradable_count          integer NOT NULL,
    security_upgradable_count integer NOT NULL,
    -- SHA-256 of the inventory (os, package manager, reboot flag, sorted packages): a report with
    -- the same hash changes nothing and writes no history.
    content_hash              bytea NOT NULL CHECK (length(content_hash) = 32),
    changed_at                timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, device_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id) ON DELETE CASCADE
);

-- ... its packages, one row each ...
CREATE TABLE device_packages (
    tenant_id uuid NOT NULL,
    device_id uuid NOT NULL,
    name      text NOT NULL,
    installed text NOT NULL,
    candidate text,
    security  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, device_id, name),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id) ON DELETE CASCADE
);

-- ... and one history row per report that changed something.
CREATE TABLE device_patch_history (
    tenant_id                 uuid NOT NULL,
    device_id                 uuid NOT NULL,
    seq                       bigint NOT NULL,
    recorded_at               timestamptz NOT NULL,
    received_at               timestamptz NOT NULL,
    os_id                     text NOT NULL,
    os_version                text NOT NULL,
    package_manager           text NOT NULL,
    reboot_required           boolean NOT NULL,
    package_count             integer NOT NULL,
    upgradable_count          integer NOT NULL,
    security_upgradable_count integer NOT NULL,
    -- {"added": [...], "removed": [...], "changed": [...], "os": {...}}
    changes                   jsonb NOT NULL CHECK (jsonb_typeof(changes) = 'object'),
    PRIMARY KEY (tenant_id, device_id, seq),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id) ON DELETE CASCADE
);

-- Row-level security: enabled, forced, one policy; for a partition as for any table (a partition
-- read directly is checked against its own policies, not its parent's).
CREATE FUNCTION fleet_secure_tenant_table(t regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
    AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s
             USING (tenant_id = public.fleet_current_tenant())
             WITH CHECK (tenant_id = public.fleet_current_tenant())', t);
END
$$;
REVOKE ALL ON FUNCTION fleet_secure_tenant_table(regclass) FROM PUBLIC;

-- A new partition: secured, and readable by fleet_app under its policy (writes go through the
-- parent, whose grants apply).
CREATE FUNCTION fleet_secure_record_partition(t regclass) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
    AS $$
BEGIN
    PERFORM public.fleet_secure_tenant_table(t);
    EXECUTE format('GRANT SELECT ON %s TO fleet_app', t);
END
$$;
REVOKE ALL ON FUNCTION fleet_secure_record_partition(regclass) FROM PUBLIC;

SELECT fleet_secure_tenant_table(t::regclass)
  FROM unnest(ARRAY['tenant_ingest_settings', 'device_records', 'device_ingest_state',
                    'device_patch_status', 'device_packages', 'device_patch_history']) AS t;
SELECT fleet_secure_record_partition('device_records_default');

-- The device directory: device id -> (tenant, status), for ingest, which learns only the device id
-- from a topic. fleet_app cannot read devices across tenants (RLS); this function can, because it
-- runs as its owner, the migration role, which fleetd requires to be superuser or BYPASSRLS
-- (store::connect checks it at start). It answers only for ids the caller already has (no
-- listing, no wildcard, at most 1,000 per call) and returns nothing else about the device.
CREATE FUNCTION fleet_device_directory(device_ids uuid[])
    RETURNS TABLE (device_id uuid, tenant_id uuid, status text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
    AS $$
BEGIN
    IF cardinality(device_ids) > 1000 THEN
        RAISE EXCEPTION 'fleet_device_directory: at most 1000 ids per call'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN QUERY
        SELECT d.device_id, d.tenant_id, d.status
          FROM public.devices d
         WHERE d.device_id = ANY (device_ids);
END
$$;
REVOKE ALL ON FUNCTION fleet_device_directory(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fleet_device_directory(uuid[]) TO fleet_app;

-- The partition of the UTC week starting at week_start: device_records_wYYYYMMDD.
CREATE FUNCTION fleet_record_partition_name(week_start timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT 'device_records_w' || to_char(week_start AT TIME ZONE 'UTC', 'YYYYMMDD') $$;

-- Creates the weekly partitions from this week to `weeks_ahead` weeks ahead that do not exist
-- yet (bounded: at most 53 per call); returns how many it created. Rows of such a week already in
-- the default partition move into the new one. Safe to call concurrently (advisory lock).
CREATE FUNCTION fleet_ensure_record_partitions(weeks_ahead integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
    AS $$
DECLARE
    this_week  timestamptz := date_trunc('week', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    week_start timestamptz;
    week_end   timestamptz;
    part       text;
    created    integer := 0;
BEGIN
    IF weeks_ahead NOT BETWEEN 0 AND 52 THEN
        RAISE EXCEPTION 'weeks_ahead must be between 0 and 52, not %', weeks_ahead;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleet_record_partitions'));
    FOR i IN 0..weeks_ahead LOOP
        week_start := this_week + make_interval(weeks => i);
        week_end := week_start + interval '7 days';
        part := public.fleet_record_partition_name(week_start);
        CONTINUE WHEN to_regclass('public.' || quote_ident(part)) IS NOT NULL;
        IF EXISTS (SELECT 1 FROM public.device_records_default
                    WHERE recorded_at >= week_start AND recorded_at < week_end) THEN
            EXECUTE format('CREATE TABLE public.%I (LIKE public.device_records INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM public.device_records_default
                                 WHERE recorded_at >= $1 AND recorded_at < $2 RETURNING *)
                 INSERT INTO public.%I SELECT * FROM moved', part)
                USING week_start, week_end;
            EXECUTE format('ALTER TABLE public.device_records ATTACH PARTITION public.%I FOR VALUES FROM (%L) TO (%L)',
                           part, week_start, week_end);
        ELSE
            EXECUTE format('CREATE TABLE public.%I PARTITION OF public.device_records FOR VALUES FROM (%L) TO (%L)',
                           part, week_start, week_end);
        END IF;
        PERFORM public.fleet_secure_record_partition(('public.' || quote_ident(part))::regclass);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;
REVOKE ALL ON FUNCTION fleet_ensure_record_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fleet_ensure_record_partitions(integer) TO fleet_app;

-- Drops at most `max_partitions` weekly partitions whose every row is older than every tenant's
-- retention (the longest configured, or the default); returns how many it dropped. Rows younger
-- than that are deleted per tenant, in bounded steps, by the retention job as fleet_app.
CREATE FUNCTION fleet_drop_expired_record_partitions(max_partitions integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
    AS $$
DECLARE
    keep_from timestamptz;
    part      record;
    dropped   integer := 0;
BEGIN
    SELECT now() - make_interval(days => greatest(public.fleet_default_record_retention_days(),
                                                  coalesce(max(s.record_retention_days), 0)))
      INTO keep_from
      FROM public.tenant_ingest_settings s;
    PERFORM pg_advisory_xact_lock(hashtext('fleet_record_partitions'));
    FOR part IN
        SELECT c.relname,
               (to_date(substr(c.relname, 17), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC')
                   + interval '7 days' AS week_end
          FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'public.device_records'::regclass
           AND c.relname ~ '^device_records_w[0-9]{8}$'
         ORDER BY c.relname
    LOOP
        EXIT WHEN dropped >= max_partitions OR part.week_end > keep_from;
        EXECUTE format('DROP TABLE public.%I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;
REVOKE ALL ON FUNCTION fleet_drop_expired_record_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fleet_drop_expired_record_partitions(integer) TO fleet_app;

-- This week and four ahead exist from the start; ingest and the retention job keep them ahead.
SELECT fleet_ensure_record_partitions(4);

GRANT SELECT, INSERT, UPDATE ON tenant_ingest_settings TO fleet_app;
GRANT SELECT, INSERT, DELETE ON device_records TO fleet_app;
GRANT SELECT, INSERT, UPDATE ON device_ingest_state TO fleet_app;
GRANT SELECT, INSERT, UPDATE ON device_patch_status TO fleet_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON device_packages TO fleet_app;
GRANT SELECT, INSERT ON device_patch_history TO fleet_app;
