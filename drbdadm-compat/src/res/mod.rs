//! The drbd.conf language: tokens, syntax tree, parser, drbdadm's checks and the effective model.

pub mod ast;
pub mod glob;
pub mod lexer;
pub mod parser;
pub mod resolve;
pub mod units;
pub mod validate;
