//! Helpers for multi-process tests: find the built binaries, run clients, clean up.
