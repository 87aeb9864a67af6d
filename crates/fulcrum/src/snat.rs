//! Placeholder: client NAT pools are being written (issue 5).

/// A client NAT pool as the daemon runs it (being written).
pub struct SnatRuntime;
