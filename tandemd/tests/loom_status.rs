//! loom model of the status board that resource tasks on several runtime threads update:
//! `src/status_file.rs`, compiled here as is with loom's `Mutex`. The board is a map under one
//! lock; what matters is that the file is rewritten under that lock, so that the last file
//! renamed into place carries every change (files written after unlocking could be renamed out
//! of order, and they share one temporary name).
//!
//! `RUSTFLAGS="--cfg tandem_loom" cargo test -p tandemd --test loom_status --release`
//! (`scripts/loom.sh` runs every model).
#![cfg(tandem_loom)]

#[path = "../src/status_file.rs"]
mod status_file;

use std::path::Path;

use drbdadm_compat::control::STATUS_FILE;
use loom::sync::Arc;
use loom::thread;
use repl_core::meta::MdFlags;
use repl_core::state::NodeState;
use repl_core::status::{Counters, Status};
use repl_core::types::Sector;
use repl_core::uuid::GenerationUuids;
use status_file::{render_status, StatusBoard};

fn status(resource: &str, minor: u32, out_of_sync: u64) -> Status {
    Status {
        resource: resource.into(),
        volume: 0,
        minor,
        state: NodeState::DOWN,
        uuids: GenerationUuids::default(),
        flags: MdFlags(0),
        size: Sector(0),
        out_of_sync,
        counters: Counters::default(),
        resync: None,
        protocol: None,
    }
}

fn published(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(STATUS_FILE)).unwrap()
}

/// After the daemon's first publish, two threads publish at once (one r0 twice; the other r1 and
/// r2, then forgets r2 as `down` does): the file left behind is the board's last state.
#[test]
fn the_last_file_written_has_every_change() {
    loom::model(|| {
        let dir = tempfile::tempdir().unwrap();
        let board = Arc::new(StatusBoard::new(dir.path()));
        board.publish();
        let a = {
            let board = board.clone();
            thread::spawn(move || {
                board.update(status("r0", 0, 1));
                board.update(status("r0", 0, 2));
            })
        };
        let b = {
            let board = board.clone();
            thread::spawn(move || {
                board.update(status("r1", 1, 0));
                board.update(status("r2", 2, 0));
                board.remove("r2");
            })
        };
        a.join().unwrap();
        b.join().unwrap();
        let want = render_status(&[status("r0", 0, 2), status("r1", 1, 0)]);
        assert_eq!(published(dir.path()), want);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only {STATUS_FILE} is left");
    });
}
