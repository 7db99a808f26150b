//! Run configurations as JSON files: a run writes its typed configuration as `config.json`, and
//! reading that file back gives the same configuration, so the file can start the run again.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// Reads a configuration from a JSON file; an error names the file and, for bad JSON or a value
/// out of its type, the line and field.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a configuration of this kind", path.display()))
}

/// Writes a configuration as pretty JSON, atomically.
pub fn write<T: Serialize>(path: &Path, cfg: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(cfg)?;
    crate::atomic_file::write(path, text.as_bytes())
}
