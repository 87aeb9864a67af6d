//! Placeholder: the session table is being written (issue 5).

/// The session table (being written).
#[derive(Debug, Default)]
pub struct SessionTable;
