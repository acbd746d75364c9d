//! The peer wire protocol: packets as values ([`packet`]) and their byte encoding.

pub mod packet;

pub use packet::*;
