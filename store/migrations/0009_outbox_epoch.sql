-- Outbox epochs (issue 10, item 3): a device whose agent lost or rolled back its state
-- directory numbers its records in a new sequence space (an epoch: a random 64-bit id chosen by
-- the agent, and the first sequence number it uses). Ingest keeps the watermark of the epoch it
-- saw last; a new epoch starts it afresh at first_seq - 1 and retires the old one, whose late
-- messages are then not stored (the agent sends their records again in its new epoch).
--
-- epoch: the id, stored bit for bit as bigint (0 = agents from before epochs).
-- retired_epochs: the epochs left behind, newest last, at most 16 (ingest keeps it bounded).
--
-- The ledger keeps its key (tenant, device, seq, recorded_at): a new epoch's seq 1 is another
-- record than the old epoch's seq 1 (another recorded_at), while a record sent again from a
-- restored outbox lands on its first copy. Patch history is keyed the same way from now on, so a
-- new epoch's report is not taken for an old one's.
--
-- Same rules as 0005: row-level security stays forced on both tables; the application role
-- (fleet_app_role()) already has SELECT, INSERT, UPDATE on device_ingest_state and SELECT,
-- INSERT on device_patch_history, table-wide, which covers the new columns. No function.
ALTER TABLE public.device_ingest_state
    ADD COLUMN epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN retired_epochs bigint[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(retired_epochs) <= 16);

ALTER TABLE public.device_patch_history
    DROP CONSTRAINT device_patch_history_pkey,
    ADD PRIMARY KEY (tenant_id, device_id, seq, recorded_at);
