//! Payload formats: decoding message bytes straight into Arrow batches.

pub mod json;

/// Why a record could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Index of the record in the decoded slice.
    pub index: usize,
    /// Reason code, e.g. `invalid_json`.
    pub reason: &'static str,
    /// Details for the error sample.
    pub detail: String,
}
