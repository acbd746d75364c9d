//! Benchmarks of tandem: criterion micro-benchmarks (`benches/`) and the `tandem-bench` binary,
//! which compares tandem-nbd end to end against nbdkit and qemu-nbd with fio through NBD
//! (`nbd`), and two replicating tandem nodes against nbdkit and nbdcopy (`repl`).
//!
//! Benchmarks are not timed tests: they print ratios against peers measured in the same run,
//! because absolute figures drift on a shared machine. The harness builds nothing; it runs the
//! binaries it is given and cleans up every child and file it made, even on Ctrl-C.

pub mod cluster;
pub mod fio;
pub mod nbd;
pub mod process;
pub mod repl;
pub mod report;
pub mod scratch;
pub mod server;
pub mod signal;
