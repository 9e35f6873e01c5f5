//! The per-tenant, hash-chained, append-only audit trail.
//!
//! Every mutation appends one event in the same transaction as the change ([`append`]). Events of
//! a tenant form a chain: event `n` stores the hash of event `n - 1` (`prev_hash`) and its own
//! `hash = SHA-256(prev_hash || canonical_bytes(event))`. The first event's `prev_hash` is 32 zero
//! bytes. The tenant's row in `audit_chain_heads` holds the last sequence number and hash and is
//! locked (`SELECT ... FOR UPDATE`) by each append, so concurrent writers of one tenant queue up
//! and produce one unbroken chain while writers of different tenants never wait for each other.
//!
//! # Canonical encoding (version 1)
//!
//! The bytes hashed for an event, in this order, with no padding:
//!
//! | field         | encoding                                                       |
//! |---------------|----------------------------------------------------------------|
//! | domain tag    | 20 bytes: the 19 ASCII bytes `fleetplane.audit.v1`, then one `0x00` |
//! | `tenant_id`   | the UUID's 16 bytes                                            |
//! | `seq`         | `i64`, 8 bytes big-endian                                      |
//! | `occurred_at` | microseconds since 1970-01-01T00:00:00Z, `i64`, 8 bytes big-endian |
//! | `actor`       | `u32` big-endian byte length, then the UTF-8 bytes             |
//! | `action`      | the same                                                       |
//! | `target`      | the same                                                       |
//! | `details`     | the same, over the exact JSON text stored in the row           |
//!
//! Every field is stored in a column that Postgres keeps exactly (`timestamptz` has microsecond
//! resolution, and `details` is `text`, not `jsonb`, so no normalisation happens), so a row
//! re-hashes to the same value after a dump and restore. A change to this encoding needs a new
//! domain tag and must keep verifying old rows.
//!
//! # Canonical encoding (version 2)
//!
//! Events written since migration 0017 use version 2, so their personal data can be erased
//! without breaking the chain ([`erase`]). It is version 1 with the domain tag
//! `fleetplane.audit.v2` (then `0x00`) and, instead of the `details` field, the 32 raw bytes of
//! SHA-256 over the exact JSON text of the details (no length prefix). The row's
//! `canonical_version` column says which encoding it was hashed with. Version 1 rows cannot be
//! erased: their hash covers the details themselves.
//!
//! # Tombstones
//!
//! An erased v2 event keeps every column but `details`, which becomes exactly
//! `{"erased":true,"details_sha256":"<hex>","by_event":<seq>}` (the digest of what was removed,
//! and the seq of the `audit.erase` event), and `erased_by` holds that seq. The verifier hashes
//! such a row with the digest from its tombstone. The database computes the tombstone itself and
//! its append-only trigger lets no other change of a row through.
//!
//! # Retention
//!
//! [`prune`] deletes a tenant's events older than its `audit_retention_days`, but only up to a
//! signed checkpoint that covers them, and records that checkpoint as the tenant's anchor: the
//! first remaining event's `prev_hash` is the anchor's hash, and verification starts there.

use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::audit_checkpoints::CheckpointVerifier;
pub use crate::audit_names::{Action, Actor, OperatorName, Target};
use crate::{StoreError, TenantId, TenantTx};

/// The `prev_hash` of a tenant's first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

const DOMAIN_TAG: &[u8; 20] = b"fleetplane.audit.v1\0";
const DOMAIN_TAG_V2: &[u8; 20] = b"fleetplane.audit.v2\0";

/// The canonical encoding new events are hashed with.
pub const CURRENT_CANONICAL_VERSION: i16 = 2;

/// Rows read per query while verifying, to keep memory flat on long chains.
const VERIFY_PAGE_ROWS: i64 = 1_000;

/// One event as stored: its place in the chain, what happened and the two hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// The tenant whose chain it belongs to.
    pub tenant_id: TenantId,
    /// Position in the tenant's chain, from 1 without gaps.
    pub seq: i64,
    /// When it happened, at microsecond resolution.
    pub occurred_at: OffsetDateTime,
    /// Who did it, e.g. `operator:alice`, `api-key:<id>`, `system`.
    pub actor: String,
    /// What was done, e.g. `tenant.create`, `device.revoke`.
    pub action: String,
    /// What it was done to, e.g. `device:<id>`.
    pub target: String,
    /// Further details as JSON text, exactly as hashed.
    pub details: String,
    /// The hash of the previous event of this tenant.
    pub prev_hash: [u8; 32],
    /// The hash of this event.
    pub hash: [u8; 32],
    /// The canonical encoding its hash was computed with: 1 or 2 (see the module documentation).
    pub canonical_version: i16,
    /// The seq of the `audit.erase` event that replaced `details` by a tombstone, if any.
    pub erased_by: Option<i64>,
}

/// The bytes of an event that its hash covers; see the module documentation.
pub fn canonical_bytes(
    tenant_id: TenantId,
    seq: i64,
    occurred_at: OffsetDateTime,
    actor: &str,
    action: &str,
    target: &str,
    details: &str,
) -> Vec<u8> {
    encode(
        DOMAIN_TAG,
        tenant_id,
        seq,
        occurred_at,
        &[actor, action, target, details],
        &[],
    )
}

/// The bytes of a version 2 event that its hash covers: as version 1 with its own domain tag and
/// the SHA-256 of the details instead of the details.
pub fn canonical_bytes_v2(
    tenant_id: TenantId,
    seq: i64,
    occurred_at: OffsetDateTime,
    actor: &str,
    action: &str,
    target: &str,
    details_sha256: &[u8; 32],
) -> Vec<u8> {
    encode(
        DOMAIN_TAG_V2,
        tenant_id,
        seq,
        occurred_at,
        &[actor, action, target],
        details_sha256,
    )
}

/// What both versions share: the domain tag, the tenant, seq and time, each text with its
/// 32-bit big-endian length, then `tail`.
fn encode(
    tag: &[u8],
    tenant_id: TenantId,
    seq: i64,
    occurred_at: OffsetDateTime,
    texts: &[&str],
    tail: &[u8],
) -> Vec<u8> {
    let text_len: usize = texts.iter().map(|t| 4 + t.len()).sum();
    let mut out = Vec::with_capacity(tag.len() + 16 + 8 + 8 + text_len + tail.len());
    out.extend_from_slice(tag);
    out.extend_from_slice(tenant_id.0.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&unix_micros(occurred_at).to_be_bytes());
    for text in texts {
        let len = u32::try_from(text.len()).expect("audit fields are far below 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(tail);
    out
}

/// The tombstone that replaces erased details; the database builds the same text
/// (`fleet_audit_tombstone`, migration 0017).
pub fn tombstone(details_sha256: &[u8; 32], by_event: i64) -> String {
    format!(
        r#"{{"erased":true,"details_sha256":"{}","by_event":{by_event}}}"#,
        hex::encode(details_sha256)
    )
}

/// The digest a tombstone carries, when `details` is exactly the tombstone naming `by_event`.
fn tombstone_digest(details: &str, by_event: i64) -> Option<[u8; 32]> {
    let value: Value = serde_json::from_str(details).ok()?;
    let digest: [u8; 32] = hex::decode(value.get("details_sha256")?.as_str()?)
        .ok()?
        .try_into()
        .ok()?;
    (tombstone(&digest, by_event) == details).then_some(digest)
}

/// `SHA-256(prev_hash || canonical)`: the link from one event to the next.
pub fn chain_hash(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical);
    hasher.finalize().into()
}

impl AuditEvent {
    /// Recomputes this event's hash from its fields and its `prev_hash`, with the encoding of
    /// its `canonical_version`. An erased row is hashed with the digest its tombstone carries; a
    /// row marked erased whose details are not exactly a tombstone naming that erasure (or a v1
    /// row marked erased) is hashed over its details text as they are, so it fails to verify.
    pub fn recompute_hash(&self) -> [u8; 32] {
        if self.canonical_version == 1 && self.erased_by.is_none() {
            let canonical = canonical_bytes(
                self.tenant_id,
                self.seq,
                self.occurred_at,
                &self.actor,
                &self.action,
                &self.target,
                &self.details,
            );
            return chain_hash(&self.prev_hash, &canonical);
        }
        let digest = self
            .erased_by
            .filter(|_| self.canonical_version == 2)
            .and_then(|by| tombstone_digest(&self.details, by))
            .unwrap_or_else(|| Sha256::digest(self.details.as_bytes()).into());
        let canonical = canonical_bytes_v2(
            self.tenant_id,
            self.seq,
            self.occurred_at,
            &self.actor,
            &self.action,
            &self.target,
            &digest,
        );
        chain_hash(&self.prev_hash, &canonical)
    }
}

/// Creates the head of a new tenant's chain. Called once, by tenant creation.
pub(crate) async fn create_chain_head(tx: &mut TenantTx) -> Result<(), StoreError> {
    let tenant = tx.tenant();
    sqlx::query!(
        "INSERT INTO audit_chain_heads (tenant_id, last_seq, last_hash) VALUES ($1, 0, $2)",
        tenant as TenantId,
        &GENESIS_HASH[..],
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Appends an event to the transaction's tenant chain, in the caller's transaction: the event
/// becomes durable exactly when the change it records does. Only the store's mutations call it:
/// each writes its own event, so no caller can forget or forge one.
pub(crate) async fn append(
    tx: &mut TenantTx,
    actor: &Actor,
    action: Action,
    target: &Target,
    details: &Value,
) -> Result<AuditEvent, StoreError> {
    append_raw(
        tx,
        &actor.to_string(),
        action.as_str(),
        &target.to_string(),
        details,
    )
    .await
}

/// [`append`] with free text, for tests of the chain itself (feature `test-support`).
#[cfg(feature = "test-support")]
pub async fn append_for_tests(
    tx: &mut TenantTx,
    actor: &str,
    action: &str,
    target: &str,
    details: &Value,
) -> Result<AuditEvent, StoreError> {
    append_raw(tx, actor, action, target, details).await
}

async fn append_raw(
    tx: &mut TenantTx,
    actor: &str,
    action: &str,
    target: &str,
    details: &Value,
) -> Result<AuditEvent, StoreError> {
    let tenant_id = tx.tenant();
    let (last_seq, prev_hash) = lock_head(tx).await?;
    let event = seal_next_event(
        tenant_id, last_seq, prev_hash, actor, action, target, details,
    )?;
    insert_event(tx, &event).await?;
    sqlx::query!(
        "UPDATE audit_chain_heads SET last_seq = $2, last_hash = $3 WHERE tenant_id = $1",
        tenant_id as TenantId,
        event.seq,
        &event.hash[..],
    )
    .execute(tx.conn())
    .await?;
    tx.audit_appended(action);
    Ok(event)
}

/// Locks the tenant's head row until the end of the transaction and reads it.
async fn lock_head(tx: &mut TenantTx) -> Result<(i64, [u8; 32]), StoreError> {
    let tenant = tx.tenant();
    let row = sqlx::query!(
        "SELECT last_seq, last_hash FROM audit_chain_heads WHERE tenant_id = $1 FOR UPDATE",
        tenant as TenantId,
    )
    .fetch_optional(tx.conn())
    .await?
    .ok_or(StoreError::NotFound("audit chain head"))?;
    Ok((row.last_seq, stored_hash("last_hash", row.last_hash)?))
}

fn seal_next_event(
    tenant_id: TenantId,
    last_seq: i64,
    prev_hash: [u8; 32],
    actor: &str,
    action: &str,
    target: &str,
    details: &Value,
) -> Result<AuditEvent, StoreError> {
    let details = serde_json::to_string(details).map_err(|e| StoreError::Invalid {
        field: "audit details",
        reason: e.to_string(),
    })?;
    let mut event = AuditEvent {
        tenant_id,
        seq: last_seq + 1,
        occurred_at: now_micros(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        details,
        prev_hash,
        hash: [0; 32],
        canonical_version: CURRENT_CANONICAL_VERSION,
        erased_by: None,
    };
    event.hash = event.recompute_hash();
    Ok(event)
}

async fn insert_event(tx: &mut TenantTx, event: &AuditEvent) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO audit_events
             (tenant_id, seq, occurred_at, actor, action, target, details, prev_hash, hash,
              canonical_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        event.tenant_id as TenantId,
        event.seq,
        event.occurred_at,
        event.actor,
        event.action,
        event.target,
        event.details,
        &event.prev_hash[..],
        &event.hash[..],
        event.canonical_version,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Events of the transaction's tenant with `seq > after`, in order, at most `limit` of them.
pub async fn list_after(
    tx: &mut TenantTx,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEvent>, StoreError> {
    list(tx, &AuditFilter::default(), after, limit).await
}

/// An `audit_events` row as selected: the macros' target.
struct EventRow {
    tenant_id: TenantId,
    seq: i64,
    occurred_at: OffsetDateTime,
    actor: String,
    action: String,
    target: String,
    details: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    canonical_version: i16,
    erased_by: Option<i64>,
}

impl TryFrom<EventRow> for AuditEvent {
    type Error = StoreError;
    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(AuditEvent {
            tenant_id: row.tenant_id,
            seq: row.seq,
            occurred_at: row.occurred_at,
            actor: row.actor,
            action: row.action,
            target: row.target,
            details: row.details,
            prev_hash: stored_hash("prev_hash", row.prev_hash)?,
            hash: stored_hash("hash", row.hash)?,
            canonical_version: row.canonical_version,
            erased_by: row.erased_by,
        })
    }
}

fn stored_hash(column: &'static str, bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Invalid {
        field: column,
        reason: "stored hash is not 32 bytes".into(),
    })
}

/// Why a chain failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// The row's content no longer matches its stored hash: it was changed after it was written.
    ContentChanged,
    /// The row's `prev_hash` is not the previous row's hash: a row before it was replaced.
    LinkBroken,
    /// The sequence has a gap: the row with this number is missing.
    RowMissing,
    /// The head row does not point at the last event: events were removed from the end, or the
    /// head was altered.
    HeadMismatch,
    /// The tenant has no head row.
    HeadMissing,
    /// A checkpoint's signature does not verify with the pinned key, or its parts disagree: it
    /// is forged (the seq is the checkpoint's).
    CheckpointSignatureInvalid,
    /// The event's hash is not the one a signed checkpoint recorded for it: it was rewritten and
    /// the chain recomputed (or the checkpoint is another tenant's).
    CheckpointMismatch,
    /// A signed checkpoint covers events that are gone: the tail was cut or the head rewound.
    BehindCheckpoint,
    /// The chain starts after an anchor (events were pruned) that no signed checkpoint vouches
    /// for: its seq and hash are not a checkpoint's (the seq is the anchor's).
    AnchorUnsigned,
}

impl ChainBreak {
    /// A short explanation for people.
    pub fn describe(self) -> &'static str {
        match self {
            ChainBreak::ContentChanged => "content does not match its hash (row was modified)",
            ChainBreak::LinkBroken => "prev_hash does not match the previous row's hash",
            ChainBreak::RowMissing => "row is missing (gap in the sequence)",
            ChainBreak::HeadMismatch => "chain head does not point at the last row",
            ChainBreak::HeadMissing => "tenant has no chain head",
            ChainBreak::CheckpointSignatureInvalid => {
                "checkpoint signature does not verify with the pinned key (forged checkpoint)"
            }
            ChainBreak::CheckpointMismatch => {
                "hash differs from the one a signed checkpoint recorded (row rewritten)"
            }
            ChainBreak::BehindCheckpoint => {
                "a signed checkpoint covers events that are missing (tail cut or head rewound)"
            }
            ChainBreak::AnchorUnsigned => {
                "events were removed up to an anchor no signed checkpoint vouches for"
            }
        }
    }
}

/// The outcome of recomputing a tenant's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainVerdict {
    /// Every event re-hashes and links to its predecessor, and the head points at the last one.
    Intact {
        /// How many events were checked.
        events: i64,
    },
    /// The first place where the chain does not hold.
    Broken {
        /// The sequence number of the first broken row.
        seq: i64,
        /// What is wrong there.
        reason: ChainBreak,
    },
}

/// Recomputes the transaction's tenant chain from its first event (after the anchor, if events
/// were pruned) and names the first break. Counted in
/// `fleet_audit_chain_verifications_total{scope="full"}`.
pub async fn verify(tx: &mut TenantTx) -> Result<ChainVerdict, StoreError> {
    let outcome = match anchor(tx).await {
        Ok(anchor) => verify_from(tx, anchor.seq + 1, anchor.hash, None).await,
        Err(e) => Err(e),
    };
    tx.metrics().verified("full", &outcome);
    outcome
}

/// [`verify`], and every event checked against signed checkpoints
/// ([`crate::audit_checkpoints`]) under the pinned key: a forged checkpoint, an event whose hash
/// differs from the one a checkpoint recorded, and a chain that ends before a checkpoint's seq
/// are each named by the first bad seq. Counted in
/// `fleet_audit_chain_verifications_total{scope="checkpoints"}`.
pub async fn verify_with_checkpoints(
    tx: &mut TenantTx,
    checkpoints: Vec<crate::audit_checkpoints::Checkpoint>,
    key: &crate::audit_checkpoints::PublicKey,
) -> Result<ChainVerdict, StoreError> {
    let outcome = match (
        CheckpointVerifier::new(tx.tenant(), checkpoints, key),
        anchor(tx).await,
    ) {
        (_, Err(e)) => Err(e),
        (Err((seq, reason)), _) => Ok(ChainVerdict::Broken { seq, reason }),
        (Ok(mut verifier), Ok(anchor)) => {
            if anchor.seq > 0 && !verifier.vouches_for(anchor.seq, &anchor.hash) {
                Ok(ChainVerdict::Broken {
                    seq: anchor.seq,
                    reason: ChainBreak::AnchorUnsigned,
                })
            } else {
                verify_from(tx, anchor.seq + 1, anchor.hash, Some(&mut verifier)).await
            }
        }
    };
    tx.metrics().verified("checkpoints", &outcome);
    outcome
}

/// Verifies a whole exported chain (events by seq, e.g. read back from a JSON Lines export)
/// against checkpoints, without the database: as [`verify_with_checkpoints`] except for the head
/// row, which an export does not carry. A chain that starts after seq 1 (events were pruned)
/// must start from a signed checkpoint: its first `prev_hash` is that checkpoint's last hash.
pub fn verify_exported(
    events: impl IntoIterator<Item = AuditEvent>,
    verifier: &mut CheckpointVerifier,
) -> ChainVerdict {
    let mut events = events.into_iter().peekable();
    let (first_seq, mut prev_hash) = match events.peek() {
        Some(first) if first.seq > 1 => {
            if !verifier.vouches_for(first.seq - 1, &first.prev_hash) {
                return ChainVerdict::Broken {
                    seq: first.seq - 1,
                    reason: ChainBreak::AnchorUnsigned,
                };
            }
            (first.seq, first.prev_hash)
        }
        _ => (1, GENESIS_HASH),
    };
    let mut expected_seq = first_seq;
    for event in events {
        if let Some(reason) = check_event(&event, expected_seq, &prev_hash, Some(&mut *verifier)) {
            return ChainVerdict::Broken {
                seq: break_seq(reason, expected_seq, &event),
                reason,
            };
        }
        prev_hash = event.hash;
        expected_seq += 1;
    }
    let last_seq = expected_seq - 1;
    match verifier.finish(last_seq) {
        Some((seq, reason)) => ChainVerdict::Broken { seq, reason },
        None => ChainVerdict::Intact {
            events: last_seq - first_seq + 1,
        },
    }
}

fn check_event(
    event: &AuditEvent,
    expected_seq: i64,
    prev_hash: &[u8; 32],
    verifier: Option<&mut CheckpointVerifier>,
) -> Option<ChainBreak> {
    check_link(event, expected_seq, prev_hash).or_else(|| verifier.and_then(|v| v.check(event)))
}

fn break_seq(reason: ChainBreak, expected_seq: i64, event: &AuditEvent) -> i64 {
    if reason == ChainBreak::RowMissing {
        expected_seq
    } else {
        event.seq
    }
}

/// Verifies the last `rows` events of the transaction's tenant chain (at least one): each
/// re-hashes to its stored hash, links to the one before it (the first of them to the stored
/// hash of its predecessor, which is not itself re-hashed), no number is missing, and the head
/// points at the last. It reads `rows + 1` events and costs one SHA-256 per event: bounded
/// whatever the chain's length, which a full [`verify`] is not. A break before the window goes
/// unnoticed here; `fleetctl audit verify` finds it. `Intact { events }` counts the events
/// checked. Counted in `fleet_audit_chain_verifications_total{scope="tail"}`.
pub async fn verify_tail(tx: &mut TenantTx, rows: u32) -> Result<ChainVerdict, StoreError> {
    let outcome = verify_last(tx, i64::from(rows.max(1))).await;
    tx.metrics().verified("tail", &outcome);
    outcome
}

async fn verify_last(tx: &mut TenantTx, rows: i64) -> Result<ChainVerdict, StoreError> {
    let chain_anchor = anchor(tx).await?;
    let last = last_event_seq(tx).await?.max(chain_anchor.seq);
    let first = (last - rows + 1).max(chain_anchor.seq + 1);
    let anchor = if first == chain_anchor.seq + 1 {
        chain_anchor.hash
    } else {
        match list_after(tx, first - 2, 1).await?.pop() {
            Some(before) if before.seq == first - 1 => before.hash,
            _ => {
                return Ok(ChainVerdict::Broken {
                    seq: first - 1,
                    reason: ChainBreak::RowMissing,
                })
            }
        }
    };
    verify_from(tx, first, anchor, None).await
}

/// Checks the events from `first_seq` on, the first of them against `prev_hash` (and each
/// against the checkpoints, if given), then the head.
async fn verify_from(
    tx: &mut TenantTx,
    first_seq: i64,
    mut prev_hash: [u8; 32],
    mut checkpoints: Option<&mut CheckpointVerifier>,
) -> Result<ChainVerdict, StoreError> {
    let mut expected_seq = first_seq;
    loop {
        let page = list_after(tx, expected_seq - 1, VERIFY_PAGE_ROWS).await?;
        let page_len = page.len();
        for event in page {
            let verifier = checkpoints.as_deref_mut();
            if let Some(reason) = check_event(&event, expected_seq, &prev_hash, verifier) {
                let seq = break_seq(reason, expected_seq, &event);
                return Ok(ChainVerdict::Broken { seq, reason });
            }
            prev_hash = event.hash;
            expected_seq += 1;
        }
        if (page_len as i64) < VERIFY_PAGE_ROWS {
            break;
        }
    }
    let last_seq = expected_seq - 1;
    // A checkpoint beyond the end is named before the head: a rewound head agrees with the
    // shortened chain, so only the checkpoint shows what is gone.
    if let Some((seq, reason)) = checkpoints.and_then(|v| v.finish(last_seq)) {
        return Ok(ChainVerdict::Broken { seq, reason });
    }
    Ok(check_head(tx, last_seq, &prev_hash)
        .await?
        .unwrap_or(ChainVerdict::Intact {
            events: last_seq - first_seq + 1,
        }))
}

/// Where a tenant's remaining chain starts: the signed checkpoint events were pruned up to
/// ([`prune`]), or seq 0 and [`GENESIS_HASH`] when none were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainAnchor {
    /// The last pruned seq: the anchor checkpoint's seq.
    pub seq: i64,
    /// Its hash: the first remaining event's `prev_hash`.
    pub hash: [u8; 32],
}

/// The transaction's tenant anchor ([`ChainAnchor`]).
pub async fn anchor(tx: &mut TenantTx) -> Result<ChainAnchor, StoreError> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, last_hash FROM audit_chain_anchors WHERE tenant_id = $1")
            .bind(tx.tenant().0)
            .fetch_optional(tx.conn())
            .await?;
    match row {
        Some((seq, hash)) => Ok(ChainAnchor {
            seq,
            hash: stored_hash("last_hash", hash)?,
        }),
        None => Ok(ChainAnchor {
            seq: 0,
            hash: GENESIS_HASH,
        }),
    }
}

/// Erases the details of the transaction's tenant event `seq` (personal data): appends an
/// `audit.erase` event naming it, with the reason and the digest of what is removed, then has
/// the database replace its details by their tombstone (see the module documentation). The
/// event's hash does not change, so the chain and every checkpoint still verify. Returns the
/// erasure event. `NotFound` when there is no such event (or it was pruned), `Invalid` for a
/// version 1 event or an empty reason, `Conflict` when it is erased already.
pub async fn erase(
    tx: &mut TenantTx,
    seq: i64,
    reason: &str,
    actor: &Actor,
) -> Result<AuditEvent, StoreError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 1_000 || reason.chars().any(char::is_control) {
        return Err(StoreError::Invalid {
            field: "reason",
            reason: "must be 1 to 1000 bytes without control characters".into(),
        });
    }
    let event = list(tx, &AuditFilter::default(), seq - 1, 1)
        .await?
        .pop()
        .filter(|e| e.seq == seq)
        .ok_or(StoreError::NotFound("audit event"))?;
    if event.canonical_version < 2 {
        return Err(StoreError::Invalid {
            field: "seq",
            reason: format!(
                "event {seq} was written with canonical version 1, whose hash covers its \
                 details: erasing them would break the chain"
            ),
        });
    }
    if event.erased_by.is_some() {
        return Err(StoreError::Conflict("the audit event is erased already"));
    }
    let digest: [u8; 32] = Sha256::digest(event.details.as_bytes()).into();
    let erasure = append(
        tx,
        actor,
        Action::AuditErase,
        &Target::AuditEvent(seq),
        &serde_json::json!({ "reason": reason, "details_sha256": hex::encode(digest) }),
    )
    .await?;
    sqlx::query("SELECT fleet_audit_erase($1, $2)")
        .bind(seq)
        .bind(erasure.seq)
        .execute(tx.conn())
        .await?;
    Ok(erasure)
}

/// What [`prune`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneOutcome {
    /// The anchor seq after the prune (0 when the tenant was never pruned).
    pub anchor_seq: i64,
    /// How many events were deleted now.
    pub deleted: i64,
    /// The `audit.prune` event's seq, when events were deleted.
    pub event_seq: Option<i64>,
}

/// Deletes the transaction's tenant events older than its `audit_retention_days`, but only up to
/// the newest signed checkpoint all of whose events are that old, and makes that checkpoint the
/// anchor verification starts from. Events after the newest checkpoint are always kept, however
/// old. When events were deleted, appends an `audit.prune` event (through seq, count, retention).
pub async fn prune(tx: &mut TenantTx, actor: &Actor) -> Result<PruneOutcome, StoreError> {
    let (anchor_seq, deleted): (i64, i64) =
        sqlx::query_as("SELECT anchor_seq, deleted FROM fleet_audit_prune()")
            .fetch_one(tx.conn())
            .await?;
    if deleted == 0 {
        return Ok(PruneOutcome {
            anchor_seq,
            deleted,
            event_seq: None,
        });
    }
    let retention_days = crate::tenants::audit_retention_days(tx).await?;
    let event = append(
        tx,
        actor,
        Action::AuditPrune,
        &Target::Tenant(tx.tenant()),
        &serde_json::json!({
            "through_seq": anchor_seq,
            "deleted": deleted,
            "audit_retention_days": retention_days,
        }),
    )
    .await?;
    Ok(PruneOutcome {
        anchor_seq,
        deleted,
        event_seq: Some(event.seq),
    })
}

/// The tenants [`prune`] may have something to remove for: their oldest event is past their
/// retention and a signed checkpoint lies after their anchor. At most `max` of them, across
/// tenants, through the narrow definer function of migration 0019 (fleetd's daily prune task).
pub async fn tenants_due_for_prune(
    app: &crate::AppDb,
    max: i32,
) -> Result<Vec<TenantId>, StoreError> {
    crate::device_directory::definer_tenant_ids(app, "SELECT fleet_audit_prune_due($1)", max).await
}

pub(crate) fn check_link(
    event: &AuditEvent,
    expected_seq: i64,
    prev_hash: &[u8; 32],
) -> Option<ChainBreak> {
    if event.seq != expected_seq {
        Some(ChainBreak::RowMissing)
    } else if event.prev_hash != *prev_hash {
        Some(ChainBreak::LinkBroken)
    } else if event.recompute_hash() != event.hash {
        Some(ChainBreak::ContentChanged)
    } else {
        None
    }
}

async fn check_head(
    tx: &mut TenantTx,
    last_seq: i64,
    last_hash: &[u8; 32],
) -> Result<Option<ChainVerdict>, StoreError> {
    let tenant = tx.tenant();
    let head = sqlx::query!(
        "SELECT last_seq, last_hash FROM audit_chain_heads WHERE tenant_id = $1",
        tenant as TenantId,
    )
    .fetch_optional(tx.conn())
    .await?;
    let Some(head) = head else {
        return Ok(Some(ChainVerdict::Broken {
            seq: last_seq + 1,
            reason: ChainBreak::HeadMissing,
        }));
    };
    let head_seq = head.last_seq;
    let head_hash = stored_hash("last_hash", head.last_hash)?;
    if head_seq != last_seq {
        // Rows after `last_seq` were removed (head ahead) or the head was rolled back (head behind).
        let seq = head_seq.min(last_seq) + 1;
        return Ok(Some(ChainVerdict::Broken {
            seq,
            reason: ChainBreak::HeadMismatch,
        }));
    }
    if head_hash != *last_hash {
        return Ok(Some(ChainVerdict::Broken {
            seq: last_seq,
            reason: ChainBreak::HeadMismatch,
        }));
    }
    Ok(None)
}

pub(crate) fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    from_unix_micros(unix_micros(now))
}

/// Microseconds since the Unix epoch: what the canonical encoding stores of a time.
pub fn unix_micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).expect("timestamps fit i64 microseconds")
}

fn from_unix_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .expect("microseconds from a valid timestamp are valid")
}

/// Which events a listing or an export wants; every field narrows, `None` does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Exactly this actor, e.g. `api-key:AbCdEf123456`.
    pub actor: Option<String>,
    /// Exactly this action, e.g. `device.revoke`.
    pub action: Option<String>,
    /// Exactly this target, e.g. `device:<id>`.
    pub target: Option<String>,
    /// Occurred at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Occurred before this instant (so consecutive ranges do not overlap).
    pub until: Option<OffsetDateTime>,
    /// Seq at most this: an export pins the end of the chain when it starts
    /// ([`last_event_seq`]), so appends during a long export do not extend it.
    pub through_seq: Option<i64>,
}

/// Events of the transaction's tenant matching `filter` with `seq > after_seq`, by seq, at most
/// `limit` of them. Walks the primary key in seq order; the text filters are not indexed, so a
/// rare actor on a long chain costs a scan of the rows after `after_seq`.
pub async fn list(
    tx: &mut TenantTx,
    filter: &AuditFilter,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<AuditEvent>, StoreError> {
    let rows = sqlx::query_as!(
        EventRow,
        r#"SELECT tenant_id AS "tenant_id: TenantId", seq, occurred_at, actor, action, target,
                  details, prev_hash, hash, canonical_version, erased_by
           FROM audit_events
          WHERE seq > $1
            AND ($2::text IS NULL OR actor = $2)
            AND ($3::text IS NULL OR action = $3)
            AND ($4::text IS NULL OR target = $4)
            AND ($5::timestamptz IS NULL OR occurred_at >= $5)
            AND ($6::timestamptz IS NULL OR occurred_at < $6)
            AND ($7::bigint IS NULL OR seq <= $7)
          ORDER BY seq LIMIT $8"#,
        after_seq,
        filter.actor.as_deref(),
        filter.action.as_deref(),
        filter.target.as_deref(),
        filter.since,
        filter.until,
        filter.through_seq,
        limit,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter().map(AuditEvent::try_from).collect()
}

/// The highest seq among the transaction's tenant events; 0 when it has none.
pub async fn last_event_seq(tx: &mut TenantTx) -> Result<i64, StoreError> {
    let last = sqlx::query_scalar!("SELECT max(seq) FROM audit_events")
        .fetch_one(tx.conn())
        .await?;
    Ok(last.unwrap_or(0))
}

impl ChainBreak {
    /// The stable snake_case name, e.g. `content_changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainBreak::ContentChanged => "content_changed",
            ChainBreak::LinkBroken => "link_broken",
            ChainBreak::RowMissing => "row_missing",
            ChainBreak::HeadMismatch => "head_mismatch",
            ChainBreak::HeadMissing => "head_missing",
            ChainBreak::CheckpointSignatureInvalid => "checkpoint_signature_invalid",
            ChainBreak::CheckpointMismatch => "checkpoint_mismatch",
            ChainBreak::BehindCheckpoint => "behind_checkpoint",
            ChainBreak::AnchorUnsigned => "anchor_unsigned",
        }
    }
}

/// An event time as RFC 3339 in UTC with exactly six fractional digits
/// (`2026-12-01T09:30:00.123456Z`): all the precision the hash covers, in a fixed width.
pub fn rfc3339_micros(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// The header row of the CSV export of a chain, with its CRLF.
///
/// # CSV export
///
/// RFC 4180: one event per row, rows end in CRLF, a field containing `,`, `"`, CR or LF is
/// enclosed in double quotes with its quotes doubled; no other escaping, so every field is the
/// stored text byte for byte. Columns: `tenant_id` (hyphenated UUID), `seq`, `occurred_at`
/// ([`rfc3339_micros`]), `occurred_at_micros` (the integer the hash covers), `actor`, `action`,
/// `target`, `details` (the exact JSON text hashed), `prev_hash` and `hash` (lowercase hex),
/// `canonical_version` (1 or 2) and `erased_by` (the erasing event's seq, or empty).
/// A third party re-verifies it with SHA-256 and the canonical encoding of this module's
/// documentation: each row's `hash` is `SHA-256(prev_hash || canonical)`, each row's `prev_hash`
/// is the previous row's `hash`, and the first event of a tenant has 32 zero bytes before it
/// (or, after a prune, the hash of the signed checkpoint the chain is anchored at). An erased
/// row's canonical bytes take the digest from its tombstone.
/// Fields are not defused for spreadsheets (a leading `=` stays), since that would change them.
pub const CSV_HEADER: &str =
    "tenant_id,seq,occurred_at,occurred_at_micros,actor,action,target,details,prev_hash,hash,\
     canonical_version,erased_by\r\n";

/// One event as a row of the CSV export ([`CSV_HEADER`]), with its CRLF.
pub fn csv_row(event: &AuditEvent) -> String {
    let mut out = String::with_capacity(
        160 + event.actor.len() + event.action.len() + event.target.len() + event.details.len(),
    );
    let fields = [
        event.tenant_id.to_string(),
        event.seq.to_string(),
        rfc3339_micros(event.occurred_at),
        unix_micros(event.occurred_at).to_string(),
    ];
    for field in &fields {
        push_csv_field(&mut out, field);
        out.push(',');
    }
    for field in [&event.actor, &event.action, &event.target, &event.details] {
        push_csv_field(&mut out, field);
        out.push(',');
    }
    out.push_str(&hex::encode(event.prev_hash));
    out.push(',');
    out.push_str(&hex::encode(event.hash));
    out.push(',');
    out.push_str(&event.canonical_version.to_string());
    out.push(',');
    if let Some(by) = event.erased_by {
        out.push_str(&by.to_string());
    }
    out.push_str("\r\n");
    out
}

/// The trailing record of a CSV export: two fields, `checkpoint` and the covering checkpoint's
/// JSON document ([`crate::audit_checkpoints::CheckpointDocument`], quoted as any field), after
/// the last event row. Absent when no checkpoint covers the exported range yet.
pub fn csv_checkpoint_record(checkpoint: &crate::audit_checkpoints::Checkpoint) -> String {
    let json = serde_json::to_string(&checkpoint.to_document()).expect("documents serialize");
    let mut out = String::from("checkpoint,");
    push_csv_field(&mut out, &json);
    out.push_str("\r\n");
    out
}

/// One event as a line of the JSON Lines export, with its LF.
///
/// # JSON Lines export
///
/// One JSON object per line, LF-terminated: when events were pruned, first
/// `{"record":"anchor","checkpoint":{..}}`, the signed checkpoint the chain starts from
/// ([`jsonl_anchor_line`]); then every event, by seq from 1 (or from the anchor's seq + 1), as
/// `{"record":"event","tenant_id":..,"seq":..,"occurred_at":..,"occurred_at_micros":..,
/// "actor":..,"action":..,"target":..,"details":..,"prev_hash":..,"hash":..}` where `details`
/// is the exact JSON text hashed, as a JSON string, and the hashes are lowercase hex; then, if a
/// checkpoint covers any of them, one line `{"record":"checkpoint","checkpoint":{..}}` with the
/// newest checkpoint at or before the last event ([`crate::audit_checkpoints::CheckpointDocument`]).
/// `tools/verify_audit_export.py` re-verifies such a file with the Python standard library and
/// `openssl`.
pub fn jsonl_event_line(event: &AuditEvent) -> String {
    let line = ExportedEvent {
        record: "event".into(),
        tenant_id: event.tenant_id.to_string(),
        seq: event.seq,
        occurred_at: rfc3339_micros(event.occurred_at),
        occurred_at_micros: unix_micros(event.occurred_at),
        actor: event.actor.clone(),
        action: event.action.clone(),
        target: event.target.clone(),
        details: event.details.clone(),
        prev_hash: hex::encode(event.prev_hash),
        hash: hex::encode(event.hash),
        canonical_version: event.canonical_version,
        erased_by: event.erased_by,
    };
    let mut out = serde_json::to_string(&line).expect("events serialize");
    out.push('\n');
    out
}

/// The first line of a JSON Lines export of a pruned chain: the signed checkpoint it is anchored
/// at, whose last hash is the first event's `prev_hash`.
pub fn jsonl_anchor_line(checkpoint: &crate::audit_checkpoints::Checkpoint) -> String {
    let line = serde_json::json!({ "record": "anchor", "checkpoint": checkpoint.to_document() });
    let mut out = line.to_string();
    out.push('\n');
    out
}

/// The last line of a JSON Lines export: the covering checkpoint.
pub fn jsonl_checkpoint_line(checkpoint: &crate::audit_checkpoints::Checkpoint) -> String {
    let line =
        serde_json::json!({ "record": "checkpoint", "checkpoint": checkpoint.to_document() });
    let mut out = line.to_string();
    out.push('\n');
    out
}

/// A JSON Lines export read back: its events and its checkpoint, if it has one.
#[derive(Debug, Default)]
pub struct JsonlExport {
    /// The events, in file order.
    pub events: Vec<AuditEvent>,
    /// The covering checkpoint, not yet checked.
    pub checkpoint: Option<crate::audit_checkpoints::Checkpoint>,
    /// The checkpoint a pruned chain is anchored at, not yet checked.
    pub anchor: Option<crate::audit_checkpoints::Checkpoint>,
}

/// One exported event line.
#[derive(serde::Serialize, serde::Deserialize)]
struct ExportedEvent {
    record: String,
    tenant_id: String,
    seq: i64,
    occurred_at: String,
    occurred_at_micros: i64,
    actor: String,
    action: String,
    target: String,
    details: String,
    prev_hash: String,
    hash: String,
    /// Absent in exports written before version 2 existed: those are all version 1.
    #[serde(default = "version_one")]
    canonical_version: i16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    erased_by: Option<i64>,
}

fn version_one() -> i16 {
    1
}

/// Parses a JSON Lines export ([`jsonl_event_line`]); a line that is not one of its records is
/// an error naming the line.
pub fn parse_jsonl(text: &str) -> Result<JsonlExport, StoreError> {
    let mut export = JsonlExport::default();
    for (number, line) in (1..).zip(text.lines()) {
        let bad = |reason: String| StoreError::Invalid {
            field: "JSON Lines export",
            reason: format!("line {number}: {reason}"),
        };
        let value: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        match value.get("record").and_then(Value::as_str) {
            Some("event") => {
                let e: ExportedEvent =
                    serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
                if !(1..=CURRENT_CANONICAL_VERSION).contains(&e.canonical_version) {
                    return Err(bad(format!(
                        "canonical_version {} is not 1 or 2",
                        e.canonical_version
                    )));
                }
                let hash = |text: &str| -> Result<[u8; 32], StoreError> {
                    hex::decode(text)
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| bad("a hash is not 64 hex characters".into()))
                };
                export.events.push(AuditEvent {
                    tenant_id: e
                        .tenant_id
                        .parse()
                        .map_err(|_| bad("tenant_id is not a UUID".into()))?,
                    seq: e.seq,
                    occurred_at: OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(e.occurred_at_micros) * 1_000,
                    )
                    .map_err(|_| bad("occurred_at_micros is out of range".into()))?,
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    details: e.details,
                    prev_hash: hash(&e.prev_hash)?,
                    hash: hash(&e.hash)?,
                    canonical_version: e.canonical_version,
                    erased_by: e.erased_by,
                });
            }
            Some(kind @ ("checkpoint" | "anchor")) => {
                let doc: crate::audit_checkpoints::CheckpointDocument = value
                    .get("checkpoint")
                    .cloned()
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|e| bad(e.to_string()))?
                    .ok_or_else(|| bad(format!("{kind} record without a checkpoint")))?;
                let slot = match kind {
                    "anchor" if number == 1 => &mut export.anchor,
                    "anchor" => return Err(bad("the anchor record is not the first line".into())),
                    _ => &mut export.checkpoint,
                };
                *slot = Some(doc.try_into()?);
            }
            _ => return Err(bad("not an anchor, event or checkpoint record".into())),
        }
    }
    Ok(export)
}

/// Appends one CSV field, quoted (RFC 4180) when it contains `,`, `"`, CR or LF.
pub fn push_csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    pub(super) fn sample(seq: i64) -> AuditEvent {
        let mut event = AuditEvent {
            tenant_id: TenantId(Uuid::from_u128(7)),
            seq,
            occurred_at: from_unix_micros(1_700_000_000_123_456),
            actor: "operator:alice".into(),
            action: "device.revoke".into(),
            target: "device:1".into(),
            details: r#"{"reason":"lost"}"#.into(),
            prev_hash: GENESIS_HASH,
            hash: [0; 32],
            canonical_version: 1,
            erased_by: None,
        };
        event.hash = event.recompute_hash();
        event
    }

    #[test]
    fn canonical_encoding_is_stable() {
        // Pinned so an accidental change of the encoding fails here, not in production verify.
        assert_eq!(
            hex::encode(sample(1).hash),
            "4c0e565901a45bc9fcc18e22bd4d8bd95f467c910dedbc00432ae0b74ef604f8"
        );
        let bytes = canonical_bytes(
            TenantId(Uuid::from_u128(7)),
            1,
            from_unix_micros(1),
            "a",
            "",
            "",
            "",
        );
        assert_eq!(bytes.len(), 20 + 16 + 8 + 8 + 4 * 4 + 1);
        assert_eq!(&bytes[..20], b"fleetplane.audit.v1\0");
        assert_eq!(&bytes[44..52], &1i64.to_be_bytes());
    }

    #[test]
    fn canonical_encoding_v2_is_stable_and_hashes_the_details_digest() {
        let mut event = sample(1);
        event.canonical_version = 2;
        event.hash = event.recompute_hash();
        assert_ne!(event.hash, sample(1).hash);
        // Pinned, as v1 above.
        assert_eq!(
            hex::encode(event.hash),
            hex::encode(chain_hash(
                &GENESIS_HASH,
                &canonical_bytes_v2(
                    event.tenant_id,
                    1,
                    event.occurred_at,
                    "operator:alice",
                    "device.revoke",
                    "device:1",
                    &Sha256::digest(br#"{"reason":"lost"}"#).into(),
                ),
            ))
        );
        let bytes = canonical_bytes_v2(
            event.tenant_id,
            1,
            from_unix_micros(1),
            "a",
            "",
            "",
            &[7; 32],
        );
        assert_eq!(bytes.len(), 20 + 16 + 8 + 8 + 3 * 4 + 1 + 32);
        assert_eq!(&bytes[..20], b"fleetplane.audit.v2\0");
        assert_eq!(&bytes[bytes.len() - 32..], &[7; 32]);
    }

    #[test]
    fn a_tombstone_keeps_the_hash_and_a_forged_one_does_not() {
        let mut event = sample(1);
        event.canonical_version = 2;
        event.hash = event.recompute_hash();
        let digest: [u8; 32] = Sha256::digest(event.details.as_bytes()).into();
        let mut erased = event.clone();
        erased.details = tombstone(&digest, 5);
        erased.erased_by = Some(5);
        assert_eq!(check_link(&erased, 1, &GENESIS_HASH), None);
        // Another digest, another erasing event, other text, or a tombstone on a v1 row.
        let mut forged = erased.clone();
        forged.details = tombstone(&[1; 32], 5);
        assert_eq!(
            check_link(&forged, 1, &GENESIS_HASH),
            Some(ChainBreak::ContentChanged)
        );
        let mut forged = erased.clone();
        forged.erased_by = Some(6);
        assert_eq!(
            check_link(&forged, 1, &GENESIS_HASH),
            Some(ChainBreak::ContentChanged)
        );
        let mut forged = erased.clone();
        forged.details = erased.details.replace("true", "1");
        assert_eq!(
            check_link(&forged, 1, &GENESIS_HASH),
            Some(ChainBreak::ContentChanged)
        );
        let v1 = sample(1);
        let mut forged = v1.clone();
        forged.details = tombstone(&Sha256::digest(v1.details.as_bytes()).into(), 5);
        forged.erased_by = Some(5);
        assert_eq!(
            check_link(&forged, 1, &GENESIS_HASH),
            Some(ChainBreak::ContentChanged)
        );
        // Details that merely look like a tombstone, without erased_by, are hashed as text.
        let mut lookalike = event;
        lookalike.details = erased.details.clone();
        assert_eq!(
            check_link(&lookalike, 1, &GENESIS_HASH),
            Some(ChainBreak::ContentChanged)
        );
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        // "ab" + "c" must not hash like "a" + "bc".
        let t = TenantId(Uuid::nil());
        let at = from_unix_micros(0);
        assert_ne!(
            canonical_bytes(t, 1, at, "ab", "c", "", ""),
            canonical_bytes(t, 1, at, "a", "bc", "", "")
        );
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let base = sample(3);
        let mut changed = base.clone();
        changed.details = r#"{"reason":"stolen"}"#.into();
        assert_ne!(changed.recompute_hash(), base.hash);
        let mut changed = base.clone();
        changed.occurred_at += time::Duration::microseconds(1);
        assert_ne!(changed.recompute_hash(), base.hash);
        let mut changed = base.clone();
        changed.prev_hash[0] ^= 1;
        assert_ne!(changed.recompute_hash(), base.hash);
        let mut changed = base;
        changed.tenant_id = TenantId(Uuid::from_u128(8));
        assert_ne!(changed.recompute_hash(), changed.hash);
    }

    #[test]
    fn link_check_names_each_kind_of_break() {
        let event = super::tests::sample(1);
        assert_eq!(check_link(&event, 1, &GENESIS_HASH), None);
        assert_eq!(
            check_link(&event, 2, &GENESIS_HASH),
            Some(ChainBreak::RowMissing)
        );
        assert_eq!(
            check_link(&event, 1, &[1; 32]),
            Some(ChainBreak::LinkBroken)
        );
        let mut tampered = event;
        tampered.actor = "operator:mallory".into();
        assert_eq!(
            check_link(&tampered, 1, &GENESIS_HASH),
            Some(ChainBreak::ContentChanged)
        );
    }

    #[test]
    fn timestamps_are_truncated_to_what_postgres_stores() {
        let at = now_micros();
        assert_eq!(at.nanosecond() % 1_000, 0);
    }
}

#[cfg(test)]
mod export_tests {
    //! The CSV export, checked the way a third party would: parsed as plain RFC 4180 and
    //! re-hashed with SHA-256 from the documented encoding alone, without this module's code.

    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn field(text: &str) -> String {
        let mut out = String::new();
        push_csv_field(&mut out, text);
        out
    }

    #[test]
    fn fields_are_quoted_only_when_needed_and_quotes_doubled() {
        assert_eq!(field("device.revoke"), "device.revoke");
        assert_eq!(field(""), "");
        assert_eq!(field(" spaced "), " spaced ");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field(r#"say "hi""#), r#""say ""hi""""#);
        assert_eq!(field("\""), "\"\"\"\"");
        assert_eq!(field("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(field("cr\rhere"), "\"cr\rhere\"");
        assert_eq!(field(r#"{"a":1,"b":"x"}"#), r#""{""a"":1,""b"":""x""}""#);
        assert_eq!(field("=SUM(A1)"), "=SUM(A1)");
    }

    #[test]
    fn times_have_six_fractional_digits_in_utc() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_000_001_000).unwrap();
        assert_eq!(rfc3339_micros(at), "2023-11-14T22:13:20.000001Z");
        let offset = at.to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(rfc3339_micros(offset), "2023-11-14T22:13:20.000001Z");
        assert_eq!(
            rfc3339_micros(OffsetDateTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn chain_break_names_are_snake_case() {
        assert_eq!(ChainBreak::ContentChanged.as_str(), "content_changed");
        assert_eq!(ChainBreak::HeadMissing.as_str(), "head_missing");
    }

    /// A chain of a tenant whose texts need every kind of quoting.
    fn chain() -> Vec<AuditEvent> {
        let tenant = TenantId(Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677));
        let entries = [
            (
                "system",
                "tenant.create",
                "tenant:x",
                json!({ "name": "acme, inc." }),
            ),
            (
                "operator:o\"brien",
                "device.rename",
                "device:1",
                json!({ "from": "a\r\nb", "to": "c,\"d\"" }),
            ),
            (
                "api-key:AbCdEf123456",
                "device.revoke",
                "device:2",
                json!({}),
            ),
            ("=cmd", "api_key.create", "api-key:x", json!({ "ü": "ß\n" })),
        ];
        let mut events = Vec::new();
        let (mut seq, mut prev) = (0, GENESIS_HASH);
        for (actor, action, target, details) in entries {
            let mut event =
                seal_next_event(tenant, seq, prev, actor, action, target, &details).unwrap();
            // Distinct, fixed times (sealing takes the clock, which may repeat a microsecond).
            event.occurred_at = from_unix_micros(1_700_000_000_000_000 + event.seq * 1_234_567);
            event.hash = event.recompute_hash();
            (seq, prev) = (event.seq, event.hash);
            events.push(event);
        }
        events
    }

    fn export(events: &[AuditEvent]) -> String {
        let mut csv = CSV_HEADER.to_owned();
        for event in events {
            csv.push_str(&csv_row(event));
        }
        csv
    }

    /// RFC 4180 records (CRLF line ends, quoted fields with doubled quotes).
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut records = Vec::new();
        let mut record = Vec::new();
        let mut field = String::new();
        let mut chars = text.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') if field.is_empty() => quoted = true,
                (false, ',') => record.push(std::mem::take(&mut field)),
                (false, '\r') if chars.peek() == Some(&'\n') => {
                    chars.next();
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                (false, c) => field.push(c),
            }
        }
        assert!(
            !quoted && field.is_empty() && record.is_empty(),
            "ends in CRLF"
        );
        records
    }

    fn decode<const N: usize>(text: &str) -> [u8; N] {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    /// Re-verifies an exported chain from its first event, with only SHA-256 and the canonical
    /// encoding as documented; the seq of the first bad row, or the count of events.
    fn verify_csv(text: &str) -> Result<usize, i64> {
        let records = parse_csv(text);
        assert_eq!(
            records[0].join(","),
            "tenant_id,seq,occurred_at,occurred_at_micros,actor,action,target,details,prev_hash,hash,\
             canonical_version,erased_by"
        );
        let mut prev = [0u8; 32];
        for (expected_seq, r) in (1i64..).zip(&records[1..]) {
            let seq: i64 = r[1].parse().unwrap();
            let micros: i64 = r[3].parse().unwrap();
            let row_prev: [u8; 32] = decode(&r[8]);
            let row_hash: [u8; 32] = decode(&r[9]);
            if seq != expected_seq || row_prev != prev {
                return Err(expected_seq);
            }
            let v2 = match r[10].as_str() {
                "1" => false,
                "2" => true,
                other => panic!("canonical_version {other}"),
            };
            let mut hasher = Sha256::new();
            hasher.update(prev);
            hasher.update(if v2 {
                b"fleetplane.audit.v2\0"
            } else {
                b"fleetplane.audit.v1\0"
            });
            hasher.update(decode::<16>(&r[0].replace('-', "")));
            hasher.update(seq.to_be_bytes());
            hasher.update(micros.to_be_bytes());
            let texts = if v2 { &r[4..7] } else { &r[4..8] };
            for text in texts {
                hasher.update(u32::try_from(text.len()).unwrap().to_be_bytes());
                hasher.update(text.as_bytes());
            }
            if v2 && r[11].is_empty() {
                hasher.update(Sha256::digest(r[7].as_bytes()));
            } else if v2 {
                let tombstone: Value = serde_json::from_str(&r[7]).unwrap();
                assert_eq!(tombstone["by_event"].to_string(), r[11]);
                hasher.update(decode::<32>(tombstone["details_sha256"].as_str().unwrap()));
            }
            let hash: [u8; 32] = hasher.finalize().into();
            if hash != row_hash {
                return Err(seq);
            }
            prev = hash;
        }
        Ok(records.len() - 1)
    }

    #[test]
    fn an_export_re_verifies_from_its_text_alone() {
        let events = chain();
        let csv = export(&events);
        assert_eq!(verify_csv(&csv), Ok(events.len()));
        // The fields come back byte for byte, and the two times agree.
        let records = parse_csv(&csv);
        for (event, record) in events.iter().zip(&records[1..]) {
            assert_eq!(record[0], event.tenant_id.to_string());
            assert_eq!(record[4], event.actor);
            assert_eq!(record[7], event.details);
            let micros: i128 = record[3].parse().unwrap();
            let at =
                OffsetDateTime::parse(&record[2], &time::format_description::well_known::Rfc3339)
                    .unwrap();
            assert_eq!(at.unix_timestamp_nanos(), micros * 1_000);
        }
    }

    #[test]
    fn the_pinned_event_re_verifies_from_csv() {
        // The event whose hash tests::canonical_encoding_is_stable pins.
        let event = super::tests::sample(1);
        let csv = export(&[event]);
        assert!(csv
            .contains(",4c0e565901a45bc9fcc18e22bd4d8bd95f467c910dedbc00432ae0b74ef604f8,1,\r\n"));
        assert_eq!(verify_csv(&csv), Ok(1));
    }

    #[test]
    fn an_erased_event_re_verifies_from_csv_with_its_tombstone_digest() {
        let mut events = chain();
        assert!(events.iter().all(|e| e.canonical_version == 2));
        let digest: [u8; 32] = Sha256::digest(events[1].details.as_bytes()).into();
        events[1].details = tombstone(&digest, 4);
        events[1].erased_by = Some(4);
        assert_eq!(events[1].recompute_hash(), events[1].hash);
        assert_eq!(verify_csv(&export(&events)), Ok(events.len()));
    }

    #[test]
    fn a_changed_or_missing_row_fails_re_verification() {
        let events = chain();
        let csv = export(&events);
        let changed = csv.replacen("acme, inc.", "acme, ltd.", 1);
        assert_ne!(changed, csv);
        assert_eq!(verify_csv(&changed), Err(1));
        let mut without_second = vec![events[0].clone()];
        without_second.extend_from_slice(&events[2..]);
        assert_eq!(verify_csv(&export(&without_second)), Err(2));
        let later_time = csv.replacen(
            &unix_micros(events[2].occurred_at).to_string(),
            &(unix_micros(events[2].occurred_at) + 1).to_string(),
            1,
        );
        assert_eq!(verify_csv(&later_time), Err(3));
    }
}
