//! Same seed, same run, bit for bit: the hash of the whole trace matches across runs (and
//! across threads, which get different `HashMap` seeds), and different seeds differ.

use repl_sim::{run, FaultLevel, Options};

#[test]
fn a_seed_replays_exactly() {
    for (seed, level) in [
        (3, FaultLevel::None),
        (11, FaultLevel::Light),
        (5, FaultLevel::Heavy),
    ] {
        let a = run(Options::new(seed, level, 1500));
        let b = std::thread::spawn(move || run(Options::new(seed, level, 1500)))
            .join()
            .expect("the second run panicked");
        assert_eq!(
            (a.trace_hash, a.steps, a.sim_ns),
            (b.trace_hash, b.steps, b.sim_ns),
            "seed {seed} {level:?} diverged between runs"
        );
        assert_eq!(a.faults, b.faults);
        assert!(a.steps >= 1500, "the run stopped early: {:?}", a.violation);
    }
}

#[test]
fn different_seeds_run_differently() {
    let a = run(Options::new(1, FaultLevel::Light, 500));
    let b = run(Options::new(2, FaultLevel::Light, 500));
    assert_ne!(a.trace_hash, b.trace_hash);
}
