//! nodecloud
pub mod cluster;
pub mod config;
pub mod event;
pub mod node;
pub mod testing;
pub mod topology;
pub mod wire;
pub use event::{Delivery, Event, NodeId, Target};
pub use node::{Node, NodeHandle};
