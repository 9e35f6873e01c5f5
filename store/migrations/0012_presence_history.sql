-- Presence history (issue 14): every connect and disconnect of a device, for the console's device
-- page. Written by store::devices::record_presence in the statement that sets devices.online, so
-- the history and the current state never disagree; each write also trims the device's history
-- to its newest store::devices::PRESENCE_HISTORY_KEPT events, so the table stays bounded per
-- device without a job of its own.
--
-- Same rules as 0001: tenant_id on every row, row-level security enabled and forced with the one
-- tenant_isolation policy, the application role (fleet_app_role(), 0005) gets only what it needs.
CREATE TABLE public.device_presence_events (
    tenant_id uuid NOT NULL,
    device_id uuid NOT NULL,
    -- Insertion order: ties of `at` (two events in one microsecond) still have an order.
    event_id  bigint GENERATED ALWAYS AS IDENTITY,
    at        timestamptz NOT NULL,
    online    boolean NOT NULL,
    PRIMARY KEY (tenant_id, event_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES public.devices (tenant_id, device_id)
        ON DELETE CASCADE
);
-- Newest first per device: the listing and the trim read this index only.
CREATE INDEX device_presence_events_by_device
    ON public.device_presence_events (tenant_id, device_id, at DESC, event_id DESC);

SELECT public.fleet_secure_tenant_table('public.device_presence_events'::regclass);

DO $$
BEGIN
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON public.device_presence_events TO %I',
                              public.fleet_app_role());
END
$$;
