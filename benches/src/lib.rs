//! Benchmark harness: end-to-end comparisons of tandem against peer NBD servers.
