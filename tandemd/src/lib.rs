//! tandemd, the node daemon: it loads resources from their `.res` files, drives one
//! `repl-core` engine per resource in its own task, performs the engine's disk operations,
//! exports Primary resources over NBD and answers `drbdadm` on a control socket.
//!
//! It does not decide anything about replication (the engine does) and does not speak the
//! NBD protocol itself (`nbd-server` does). Peer links arrive with replication.

pub mod config;
pub mod daemon;
pub mod disk;
pub mod export;
pub mod handlers;
pub mod link;
pub mod peer_config;
pub mod resource;
pub mod status_file;
