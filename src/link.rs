//! The link core that peer and service sessions share.
//!
//! * [`stream`] — the per-peer stream of a resumable peer link (protocol version 2): sequence
//!   numbers, cumulative acknowledgements and the replay buffer, which outlive one connection.

pub mod stream;
