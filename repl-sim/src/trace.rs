//! The run's trace: one line per step plus indented notes of what the step caused, a running
//! hash over all of it (the determinism fingerprint), and the last steps kept for reports.

use std::collections::VecDeque;

/// FNV-1a, 64 bit: small, and stable across builds and platforms.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// Where trace lines go.
#[derive(Debug)]
pub struct Trace {
    hash: Fnv,
    recent: VecDeque<Vec<String>>,
    keep: usize,
    print: bool,
}

impl Trace {
    /// Keeps the last `keep` steps; prints every line as it comes when `print`.
    pub fn new(keep: usize, print: bool) -> Trace {
        Trace {
            hash: Fnv::default(),
            recent: VecDeque::with_capacity(keep + 1),
            keep,
            print,
        }
    }

    fn hash_line(&mut self, line: &str) {
        self.hash.write(line.as_bytes());
        self.hash.write(b"\n");
        if self.print {
            println!("{line}");
        }
    }

    /// Starts a step with its headline.
    pub fn step(&mut self, line: String) {
        self.hash_line(&line);
        if self.keep > 0 {
            if self.recent.len() == self.keep {
                self.recent.pop_front();
            }
            self.recent.push_back(vec![line]);
        }
    }

    /// Adds a note to the current step.
    pub fn note(&mut self, line: String) {
        let line = format!("    {line}");
        self.hash_line(&line);
        if let Some(s) = self.recent.back_mut() {
            if s.len() < 200 {
                s.push(line);
            }
        }
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    /// The last steps' lines, oldest first.
    pub fn recent(&self) -> Vec<String> {
        self.recent.iter().flatten().cloned().collect()
    }
}
