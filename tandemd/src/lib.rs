//! tandemd, the node daemon: it loads resources from their `.res` files, drives one
//! `repl-core` engine per volume in its own task (the volumes of a resource share one peer
//! connection), performs the engines' disk operations, exports the volumes of Primary
//! resources over NBD and answers `drbdadm` on a control socket.
//!
//! It does not decide anything about replication (the engine does) and does not speak the
//! NBD protocol itself (`nbd-server` does).

pub mod config;
pub mod daemon;
pub mod disk;
pub mod export;
pub mod handlers;
pub mod link;
pub mod peer_config;
pub mod resource;
pub mod status_file;
