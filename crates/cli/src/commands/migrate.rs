//! `eventfold migrate`: apply the store's schema migrations and print the schema version.

use crate::context::Global;

/// Opens the store (which migrates it) and prints the version found and the version now.
///
/// # Errors
/// A store that cannot be opened, or whose schema is newer than this binary.
pub async fn exec(global: &Global) -> anyhow::Result<()> {
    let backend = global.open().await?;
    let s = backend.schema;
    global.output().print(&s, || {
        if s.previous == s.current {
            format!("schema version {}: already current", s.current)
        } else {
            format!(
                "schema version {} (migrated from {}, {} migration(s) applied)",
                s.current,
                s.previous,
                s.current - s.previous
            )
        }
    })
}
