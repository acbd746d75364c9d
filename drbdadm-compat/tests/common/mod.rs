//! Running drbd-utils' `drbdadm-84` (the oracle) and our `drbdadm` side by side.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const ORACLE: &str = "/lib/drbd/drbdadm-84";

/// The oracle, or `None` after printing why the test is skipped.
pub fn oracle() -> Option<&'static str> {
    if Path::new(ORACLE).exists() {
        Some(ORACLE)
    } else {
        // CI installs drbd-utils: a missing oracle there is a broken setup, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "{ORACLE} is missing in CI (Debian package drbd-utils)"
        );
        eprintln!(
            "SKIPPED: {ORACLE} is not installed (install drbd-utils to run the golden tests)"
        );
        None
    }
}

pub fn corpus() -> PathBuf {
    std::env::var_os("TANDEM_RES_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // `shared/` stands beside the repository checkout.
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/res-corpus")
        })
}

/// Files directly in a corpus directory (not in subdirectories), sorted.
pub fn files(dir: &str) -> Vec<PathBuf> {
    let path = corpus().join(dir);
    let rd = std::fs::read_dir(&path).unwrap_or_else(|e| {
        panic!(
            "corpus {} unreadable ({e}); set TANDEM_RES_CORPUS",
            path.display()
        )
    });
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

fn finish(out: std::process::Output) -> Run {
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// Runs the oracle in `dir`; with `node`, pretending to be that node (`__DRBD_NODE__`, which
/// also prints a notice on stderr).
pub fn run_oracle(dir: &Path, node: Option<&str>, args: &[&str]) -> Run {
    let mut c = Command::new(ORACLE);
    c.current_dir(dir)
        .args(args)
        .env("DRBD_DONT_WARN_ON_VERSION_MISMATCH", "1");
    c.env_remove("__DRBD_NODE__");
    if let Some(n) = node {
        c.env("__DRBD_NODE__", n);
    }
    finish(c.output().expect("run drbdadm-84"))
}

/// Runs our binary in `dir`, as `node` if given.
pub fn run_ours(dir: &Path, node: Option<&str>, args: &[&str]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drbdadm"));
    c.current_dir(dir).args(args).env_remove("TANDEM_NODE");
    if let Some(n) = node {
        c.arg("--node").arg(n);
    }
    finish(c.output().expect("run drbdadm"))
}

/// The `on` host names of a config text (crude, for picking nodes to test as).
pub fn host_names(text: &str) -> Vec<String> {
    let mut v = Vec::new();
    let toks: Vec<&str> = text.split_whitespace().collect();
    for w in toks.windows(2) {
        if w[0] == "on" {
            let n = w[1].trim_end_matches('{').to_string();
            if !n.is_empty() && !v.contains(&n) {
                v.push(n);
            }
        }
    }
    v
}

/// Resource names of a config text (crude).
pub fn resource_names(text: &str) -> Vec<String> {
    let toks: Vec<&str> = text.split_whitespace().collect();
    toks.windows(2)
        .filter(|w| w[0] == "resource")
        .map(|w| w[1].trim_end_matches('{').trim_matches('"').to_string())
        .collect()
}
