-- Audit retention and erasure that keep the chain (issue 15, item 4).
--
-- Erasure: canonical version 2 of an event (store::audit) hashes SHA-256(details) instead of the
-- details, so the details of a v2 row can be replaced by a tombstone carrying that digest and the
-- event's hash (and every checkpoint over it) still verifies. `canonical_version` says which
-- encoding a row was hashed with (existing rows: 1, which cannot be erased). `erased_by` is the
-- seq of the `audit.erase` event that removed the details.
--
-- Retention: events are deleted only up to a signed checkpoint (0014); the tenant's anchor row
-- records that checkpoint's seq and last hash, and verification starts from it.
--
-- The append-only trigger of 0001 stays; its row trigger now lets exactly two changes through,
-- whoever makes them: a v2 row's details replaced by the tombstone of those very details, and the
-- deletion of rows at or behind the tenant's anchor. The application role still has neither
-- UPDATE nor DELETE on audit_events; it reaches them only through the two SECURITY DEFINER
-- functions below.
ALTER TABLE public.audit_events
    ADD COLUMN canonical_version smallint NOT NULL DEFAULT 1 CHECK (canonical_version IN (1, 2)),
    ADD COLUMN erased_by bigint CHECK (erased_by > seq),
    ADD CONSTRAINT audit_events_only_v2_erased CHECK (erased_by IS NULL OR canonical_version = 2);
-- New rows state their version (store::audit inserts it); no default hides a forgotten one.
ALTER TABLE public.audit_events ALTER COLUMN canonical_version DROP DEFAULT;

-- Per-tenant audit retention: at least 30 days, at most 100 years, default one year.
ALTER TABLE public.tenants
    ADD COLUMN audit_retention_days integer NOT NULL DEFAULT 365
        CHECK (audit_retention_days BETWEEN 30 AND 36500);
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT UPDATE (audit_retention_days) ON public.tenants TO %I',
                              public.fleet_app_role());
END $$;

-- One row per pruned tenant: the signed checkpoint the remaining chain starts from.
CREATE TABLE public.audit_chain_anchors (
    tenant_id  uuid PRIMARY KEY REFERENCES public.tenants (tenant_id),
    seq        bigint NOT NULL CHECK (seq >= 1),
    last_hash  bytea NOT NULL CHECK (length(last_hash) = 32),
    updated_at timestamptz NOT NULL
);
SELECT public.fleet_secure_tenant_table('public.audit_chain_anchors'::regclass);
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT SELECT ON public.audit_chain_anchors TO %I',
                              public.fleet_app_role());
END $$;

-- The tombstone of `details`, erased by event `by_event`. store::audit parses exactly this form.
CREATE FUNCTION public.fleet_audit_tombstone(details text, by_event bigint) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT '{"erased":true,"details_sha256":"'
           || pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(details, 'UTF8')), 'hex')
           || '","by_event":' || by_event::text || '}'
$$;

CREATE FUNCTION public.audit_events_guard_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.canonical_version = 2 AND OLD.erased_by IS NULL AND NEW.erased_by IS NOT NULL
       AND (NEW.tenant_id, NEW.seq, NEW.occurred_at, NEW.actor, NEW.action, NEW.target,
            NEW.prev_hash, NEW.hash, NEW.canonical_version)
           IS NOT DISTINCT FROM
           (OLD.tenant_id, OLD.seq, OLD.occurred_at, OLD.actor, OLD.action, OLD.target,
            OLD.prev_hash, OLD.hash, OLD.canonical_version)
       AND NEW.details = public.fleet_audit_tombstone(OLD.details, NEW.erased_by)
       AND EXISTS (SELECT 1 FROM public.audit_events e
                    WHERE e.tenant_id = OLD.tenant_id AND e.seq = NEW.erased_by
                      AND e.action = 'audit.erase' AND e.target = 'audit_event:' || OLD.seq::text)
    THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE'
       AND EXISTS (SELECT 1 FROM public.audit_chain_anchors a
                    WHERE a.tenant_id = OLD.tenant_id AND OLD.seq <= a.seq)
    THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
DROP TRIGGER audit_events_append_only_rows ON public.audit_events;
CREATE TRIGGER audit_events_append_only_rows
    BEFORE UPDATE OR DELETE ON public.audit_events
    FOR EACH ROW EXECUTE FUNCTION public.audit_events_guard_change();

-- Replaces the details of the current tenant's v2 event `target_seq` by their tombstone, naming
-- the `audit.erase` event `by_event` (appended first, in the same transaction, by store::audit).
-- The digest is computed here from the stored details, so no caller chooses it.
CREATE FUNCTION public.fleet_audit_erase(target_seq bigint, by_event bigint) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid := public.fleet_current_tenant();
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'no tenant in this transaction';
    END IF;
    UPDATE public.audit_events
       SET details = public.fleet_audit_tombstone(details, by_event), erased_by = by_event
     WHERE tenant_id = tenant AND seq = target_seq
       AND canonical_version = 2 AND erased_by IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit event % cannot be erased (missing, version 1 or erased already)',
            target_seq USING ERRCODE = 'check_violation';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION public.fleet_audit_erase(bigint, bigint) FROM PUBLIC;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.fleet_audit_erase(bigint, bigint) TO %I',
                              public.fleet_app_role());
END $$;

-- Deletes the current tenant's events older than its audit retention, but only up to the newest
-- signed checkpoint whose every covered event is that old (never beyond the newest checkpoint),
-- after moving the tenant's anchor to that checkpoint. Returns the new anchor seq and how many
-- events were deleted; (current anchor or 0, 0) when nothing is due. Refuses to prune when the
-- checkpoint's last hash is not the event's (a broken chain is not pruned out of sight).
CREATE FUNCTION public.fleet_audit_prune(OUT anchor_seq bigint, OUT deleted bigint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant uuid := public.fleet_current_tenant();
    cutoff timestamptz;
    first_young bigint;
    current_anchor bigint;
    target record;
    event_hash bytea;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'no tenant in this transaction';
    END IF;
    SELECT pg_catalog.now() - pg_catalog.make_interval(days => t.audit_retention_days)
      INTO STRICT cutoff FROM public.tenants t WHERE t.tenant_id = tenant;
    SELECT coalesce(max(a.seq), 0) INTO current_anchor
      FROM public.audit_chain_anchors a WHERE a.tenant_id = tenant;
    -- Time is not strictly monotonic across writers: the first event young enough to keep
    -- bounds the cut, whatever older ones follow it.
    SELECT min(e.seq) INTO first_young
      FROM public.audit_events e WHERE e.tenant_id = tenant AND e.occurred_at >= cutoff;
    SELECT c.seq, c.last_hash INTO target
      FROM public.audit_checkpoints c
     WHERE c.tenant_id = tenant AND c.seq > current_anchor
       AND (first_young IS NULL OR c.seq < first_young)
       AND c.seq <= (SELECT h.last_seq FROM public.audit_chain_heads h WHERE h.tenant_id = tenant)
     ORDER BY c.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        anchor_seq := current_anchor;
        deleted := 0;
        RETURN;
    END IF;
    SELECT e.hash INTO event_hash
      FROM public.audit_events e WHERE e.tenant_id = tenant AND e.seq = target.seq;
    IF event_hash IS DISTINCT FROM target.last_hash THEN
        RAISE EXCEPTION 'audit event % does not match its checkpoint; not pruning', target.seq
            USING ERRCODE = 'data_corrupted';
    END IF;
    INSERT INTO public.audit_chain_anchors (tenant_id, seq, last_hash, updated_at)
         VALUES (tenant, target.seq, target.last_hash, pg_catalog.now())
    ON CONFLICT (tenant_id) DO UPDATE
         SET seq = EXCLUDED.seq, last_hash = EXCLUDED.last_hash, updated_at = EXCLUDED.updated_at;
    DELETE FROM public.audit_events e WHERE e.tenant_id = tenant AND e.seq <= target.seq;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    anchor_seq := target.seq;
END
$$;
REVOKE ALL ON FUNCTION public.fleet_audit_prune() FROM PUBLIC;
DO $$ BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.fleet_audit_prune() TO %I',
                              public.fleet_app_role());
END $$;
