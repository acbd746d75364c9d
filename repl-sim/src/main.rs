//! `repl-sim`: runs seeds of the deterministic two-node simulation and reports broken
//! invariants. Exits 0 only when every seed held every invariant.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use repl_sim::{run, FaultLevel, Options, Report};

/// Deterministic simulation of two tandem nodes under seeded faults.
#[derive(Debug, Parser)]
#[command(name = "repl-sim", version)]
struct Cli {
    /// Seeds to run: `A..B` (B excluded) or `A..=B`.
    #[arg(long, value_parser = parse_seeds, conflicts_with = "seed")]
    seeds: Option<(u64, u64)>,
    /// One seed (replay it with `--trace`).
    #[arg(long)]
    seed: Option<u64>,
    /// Fault level: none, light or heavy.
    #[arg(long, default_value = "light")]
    faults: FaultLevel,
    /// Steps of the fault phase per seed (the healed phase follows).
    #[arg(long, default_value_t = repl_sim::DEFAULT_STEPS)]
    steps: u64,
    /// Print every step of the run (with `--seed`).
    #[arg(long)]
    trace: bool,
    /// Threads running seeds in parallel (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Steps of trace shown for a violation.
    #[arg(long, default_value_t = 40)]
    context: usize,
    /// Do not steer around any of the known engine bugs (to reproduce them).
    #[arg(long)]
    expose_known_bugs: bool,
    /// Do not steer around this known engine bug (repeatable; names as printed).
    #[arg(long = "expose", value_name = "NAME")]
    expose: Vec<String>,
}

fn parse_seeds(s: &str) -> Result<(u64, u64), String> {
    let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b, false)
    } else {
        return Err(format!("{s:?}: expected A..B or A..=B"));
    };
    let a: u64 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    let end = if inclusive { b.checked_add(1) } else { Some(b) };
    match end {
        Some(end) if end > a => Ok((a, end)),
        _ => Err(format!("{s:?} is an empty range")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(bad) = cli
        .expose
        .iter()
        .find(|e| !repl_sim::KNOWN_ENGINE_BUGS.iter().any(|(n, _)| n == e))
    {
        eprintln!("repl-sim: --expose {bad}: not a known engine bug name");
        return ExitCode::from(2);
    }
    let (start, end) = match (cli.seeds, cli.seed) {
        (Some(r), _) => r,
        (None, Some(s)) => (s, s.saturating_add(1)),
        (None, None) => {
            eprintln!("repl-sim: give --seeds A..B or --seed S");
            return ExitCode::from(2);
        }
    };
    if cli.trace && end - start > 1 {
        eprintln!("repl-sim: --trace replays one seed; use --seed S");
        return ExitCode::from(2);
    }
    let jobs = cli
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 256);
    let started = Instant::now();
    let next = AtomicU64::new(start);
    let reports: Mutex<Vec<Report>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min((end - start) as usize) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let mut o = Options::new(seed, cli.faults, cli.steps);
                o.print_trace = cli.trace;
                o.keep_steps = cli.context;
                o.workarounds = !cli.expose_known_bugs;
                o.exposed = cli.expose.clone();
                let r = run(o);
                if let Ok(mut v) = reports.lock() {
                    v.push(r);
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut reports = reports.into_inner().unwrap_or_default();
    reports.sort_by_key(|r| r.seed);
    summarize(&cli, &reports, elapsed)
}

fn summarize(cli: &Cli, reports: &[Report], elapsed: f64) -> ExitCode {
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut stats: BTreeMap<&str, u64> = BTreeMap::new();
    let mut steps = 0u64;
    let mut violations = 0u64;
    let mut known = 0u64;
    for r in reports {
        steps += r.steps;
        for (k, v) in &r.faults {
            *faults.entry(k).or_default() += v;
        }
        for (k, v) in &r.stats {
            *stats.entry(k).or_default() += v;
        }
        let Some(v) = &r.violation else {
            continue;
        };
        let known_issue = repl_sim::known_failure(r.seed, cli.faults, cli.steps, v.invariant);
        if known_issue.is_some() {
            known += 1;
        } else {
            violations += 1;
        }
        println!(
            "\n=== seed {} (faults {}): invariant {} broken at step {} ({:.6}s){}",
            r.seed,
            cli.faults.name(),
            v.invariant,
            v.step,
            v.at_ns as f64 / 1e9,
            known_issue.map_or(String::new(), |i| format!(" [KNOWN ENGINE BUG: {i}]"))
        );
        println!("{}", v.detail);
        if !cli.trace {
            println!("--- last steps:");
            for l in &v.trace {
                println!("{l}");
            }
            let mut flags = String::new();
            if cli.expose_known_bugs {
                flags.push_str(" --expose-known-bugs");
            }
            for e in &cli.expose {
                flags.push_str(&format!(" --expose {e}"));
            }
            println!(
                "--- replay: repl-sim --seed {} --faults {} --steps {}{flags} --trace",
                r.seed,
                cli.faults.name(),
                cli.steps
            );
        }
    }
    let list = |m: &BTreeMap<&str, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if reports.len() == 1 {
        println!("trace hash {:016x}", reports[0].trace_hash);
    }
    println!("events: {}", list(&stats));
    println!(
        "summary: seeds {} (faults {}), steps {steps}, {:.1} s wall ({:.1} seeds/s), faults: [{}], known failures {known}, violations {violations}",
        reports.len(),
        cli.faults.name(),
        elapsed,
        reports.len() as f64 / elapsed.max(1e-9),
        list(&faults)
    );
    if !cli.expose_known_bugs {
        for (name, what) in repl_sim::KNOWN_ENGINE_BUGS {
            if !cli.expose.iter().any(|e| e == name) {
                println!("WORKAROUND for a known engine bug ({name}): {what}");
            }
        }
    }
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
