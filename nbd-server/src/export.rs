//! Named exports and where the server finds them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::device::BlockDevice;

/// A device served under a name.
#[derive(Clone)]
pub struct Export {
    pub name: String,
    pub description: String,
    pub device: Arc<dyn BlockDevice>,
    pub read_only: bool,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.device.size())
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// Why an export cannot be opened; the client sees the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No export by that name (`NBD_REP_ERR_UNKNOWN`).
    #[error("{0}")]
    Unknown(String),
    /// The export exists but may not be used now (`NBD_REP_ERR_POLICY`), e.g. a Secondary.
    #[error("{0}")]
    Policy(String),
}

/// Where the server looks exports up; the daemon implements it over its resources.
pub trait ExportSource: Send + Sync + 'static {
    /// Names and descriptions, for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<(String, String)>;
    /// The export for a name (the empty name is the default export).
    ///
    /// # Errors
    /// A [`Refusal`] whose message is sent to the client.
    fn open(&self, name: &str) -> Result<Export, Refusal>;
}

/// A fixed set of exports.
#[derive(Default, Clone)]
pub struct ExportTable {
    exports: BTreeMap<String, Export>,
}

impl ExportTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the export of that name.
    pub fn insert(&mut self, export: Export) {
        self.exports.insert(export.name.clone(), export);
    }
}

impl ExportSource for ExportTable {
    fn list(&self) -> Vec<(String, String)> {
        self.exports
            .values()
            .map(|e| (e.name.clone(), e.description.clone()))
            .collect()
    }

    fn open(&self, name: &str) -> Result<Export, Refusal> {
        self.exports
            .get(name)
            .cloned()
            .ok_or_else(|| Refusal::Unknown(format!("no export named {name:?}")))
    }
}
