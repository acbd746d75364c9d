//! Every seed and every committed corpus file passes its target's checks without libFuzzer
//! (`cargo test` in `fuzz/`): the seeds are valid and the oracles raise no false alarm on them.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// The allocation counters are process-wide: tests that run a target take turns.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn options_seeds_pass() {
    let _turn = one_at_a_time();
    for (name, input) in tandem_fuzz::seeds::options() {
        eprintln!("seed {name}");
        tandem_fuzz::options::run(&input);
    }
    for (name, input) in corpus("nbd_options") {
        eprintln!("{name}");
        tandem_fuzz::options::run(&input);
    }
}

#[test]
fn requests_seeds_pass() {
    let _turn = one_at_a_time();
    for (name, input) in tandem_fuzz::seeds::requests() {
        eprintln!("seed {name}");
        tandem_fuzz::requests::run(&input);
    }
    for (name, input) in corpus("nbd_requests") {
        eprintln!("{name}");
        tandem_fuzz::requests::run(&input);
    }
}

#[test]
fn seeds_are_committed_small() {
    for t in ["nbd_options", "nbd_requests"] {
        let files = corpus(t);
        let bytes: usize = files.iter().map(|f| f.1.len()).sum();
        assert!(
            files.len() < 100 && bytes < 1 << 20,
            "{t}: {} files, {bytes} bytes",
            files.len()
        );
    }
}

#[test]
#[ignore = "timing report: cargo test --release -- --ignored --nocapture"]
fn seed_timings() {
    let _turn = one_at_a_time();
    for (name, input) in tandem_fuzz::seeds::requests() {
        let t = std::time::Instant::now();
        tandem_fuzz::requests::run(&input);
        eprintln!("{name}: {:?}", t.elapsed());
    }
}

/// 200 pipelined 1 MiB READs of a 1 MiB export: the server's live heap must stay within its
/// in-flight budget (2 x 32 MiB + 1 MiB) however slowly the client reads.
#[test]
fn pipelined_reads_stay_within_budget() {
    let _turn = one_at_a_time();
    let mut input = vec![0x02, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00];
    input.extend_from_slice(&[0xff, 198]);
    tandem_fuzz::requests::run(&input);
}
