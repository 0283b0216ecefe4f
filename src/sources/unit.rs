//! The unit every live source hands to the mapper: a piece of input text (a content blob, an
//! Event Hubs message, the new lines of an append blob) with the acknowledgement that lets the
//! source move its position once every row taken from it is safe downstream.

use std::sync::Arc;

use crate::ack::Ack;
use crate::record::{Position, Rejected};
use crate::sources::management::BlobDedupe;
use crate::sources::recent::RecentRows;
use crate::stages::decode::Fields;

/// Text ready to map. The mapper admits each record through `dedupe`, attaches a handle of
/// `ack` to each row it emits, then releases `ack` itself.
pub struct Unit {
    /// The text, or why it could not be read (a record for the refused-input file).
    pub content: Result<String, Rejected>,
    pub pos: Position,
    pub ack: Ack,
    pub dedupe: Dedupe,
    /// Whose and from where, for the raw archive's blob names.
    pub origin: Origin,
}

/// The tenant (the source's label) and the source within it (a content type, `eventhubs`,
/// `storage`) a unit came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub tenant: Arc<str>,
    pub source: Arc<str>,
    /// When the source says the unit was made (a content blob's `contentCreated`), ms since
    /// the epoch: the archive's hour when no record has a time of its own.
    pub created_ms: Option<i64>,
}

/// How a source recognises records it handed on before.
pub enum Dedupe {
    /// Audit records, by their `Id`, against the tenant's seen-id set.
    Ids(BlobDedupe),
    /// Defender rows have no id: exact repeats of a row within a time window.
    Recent(RecentRows),
}

impl Dedupe {
    /// False for a record that was handed on already.
    pub fn admit(&mut self, fields: &Fields) -> bool {
        match self {
            Self::Ids(ids) => ids.admit(fields),
            Self::Recent(recent) => recent.admit(fields),
        }
    }
}
