//! The peer wire protocol: packets as values ([`packet`]) and their byte encoding.

pub mod codec;
pub mod packet;

pub use codec::*;
pub use packet::*;
