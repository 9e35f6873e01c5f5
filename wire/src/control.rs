//! The small messages outside the record stream: the ack (server → device) and
//! presence (the device's will).

use serde::{Deserialize, Serialize};

use crate::SchemaVersion;

/// The server's acknowledgement, published to the device's
/// [`ack`](crate::topic::ack) topic after a database commit.
///
/// `watermark` is the highest sequence number such that every record the device
/// sent with a sequence number at or below it is durably handled: stored, or
/// refused for good (a refused record is never worth resending). The device may
/// delete those records from its outbox. A watermark never moves backwards;
/// acks may be lost or repeated, and each one supersedes the earlier ones.
///
/// `handled_above` lists numbers above the watermark that are handled too (a hole below them
/// is still open): a device that evicted records it had sent must not report those as lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The schema version the sender wrote. Key `v`.
    #[serde(rename = "v")]
    pub version: SchemaVersion,
    /// The ack watermark. Key `w`.
    #[serde(rename = "w")]
    pub watermark: u64,
    /// The id of the [`Epoch`](crate::Epoch) the watermark counts in. Key `e`; absent from
    /// servers before epochs (the agent then takes the watermark as its own).
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The server holds other records than the device's under some of the sequence numbers
    /// the device just sent in this epoch (its outbox was restored from an older copy): the
    /// device must not trim its outbox with this ack, but start a new epoch and send its
    /// unacknowledged records again in it. Key `n`; absent means false.
    #[serde(rename = "n", default, skip_serializing_if = "std::ops::Not::not")]
    pub new_epoch: bool,
    /// Inclusive ranges `(first, last)` of sequence numbers above the watermark that are
    /// handled as well, lowest first; not necessarily all of them (the ack stays within
    /// [`MAX_CONTROL_MESSAGE_BYTES`](crate::limits::MAX_CONTROL_MESSAGE_BYTES), see
    /// [`Ack::fit_handled_above`]). Key `s`; absent means none known. A range with
    /// `first > last` means nothing.
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    pub handled_above: Vec<(u64, u64)>,
}

impl Ack {
    /// An ack in the current schema version.
    pub fn new(watermark: u64) -> Self {
        Self {
            version: SchemaVersion::CURRENT,
            watermark,
            epoch: None,
            new_epoch: false,
            handled_above: Vec::new(),
        }
    }

    /// An ack of `watermark` in the epoch `epoch`.
    pub fn in_epoch(watermark: u64, epoch: u64) -> Self {
        Self {
            epoch: Some(epoch),
            ..Self::new(watermark)
        }
    }

    /// Adds `ranges` (lowest first) to [`handled_above`](Self::handled_above) while the
    /// encoded ack stays within
    /// [`MAX_CONTROL_MESSAGE_BYTES`](crate::limits::MAX_CONTROL_MESSAGE_BYTES), so that
    /// every agent, old ones included, can still decode it. Returns how many were added.
    pub fn fit_handled_above(&mut self, ranges: impl IntoIterator<Item = (u64, u64)>) -> usize {
        let mut added = 0;
        for range in ranges {
            self.handled_above.push(range);
            if crate::encode_ack(self).len() > crate::limits::MAX_CONTROL_MESSAGE_BYTES {
                self.handled_above.pop();
                break;
            }
            added += 1;
        }
        added
    }

    /// The [`handled_above`](Self::handled_above) ranges that mean something.
    pub fn handled_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.handled_above
            .iter()
            .copied()
            .filter(|(first, last)| first <= last)
    }
}

/// Whether the device is connected, on its [`presence`](crate::topic::presence)
/// topic.
///
/// The agent publishes `online: true` (retained) after connecting, and registers
/// `online: false` (retained) as its MQTT will, which the broker publishes when
/// the connection dies without a clean disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The schema version the sender wrote. Key `v`.
    #[serde(rename = "v")]
    pub version: SchemaVersion,
    /// Whether the device is connected. Key `o`.
    #[serde(rename = "o")]
    pub online: bool,
}

impl Presence {
    /// A presence message in the current schema version.
    pub fn new(online: bool) -> Self {
        Self {
            version: SchemaVersion::CURRENT,
            online,
        }
    }
}
