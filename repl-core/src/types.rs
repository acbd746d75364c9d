//! Small value types shared across the engine.

use std::fmt;

/// A 512-byte sector number or count, DRBD's unit for sizes and offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sector(pub u64);

impl Sector {
    pub const SIZE: u64 = 512;

    /// Sectors covering `bytes` exactly; `None` when `bytes` is not a multiple of 512.
    pub fn from_bytes(bytes: u64) -> Option<Sector> {
        bytes
            .is_multiple_of(Self::SIZE)
            .then_some(Sector(bytes / Self::SIZE))
    }

    pub fn bytes(self) -> u64 {
        self.0 * Self::SIZE
    }
}

/// A DRBD generation identifier. Bit 0 carries the "primary" flag in the current UUID and is
/// masked off when UUIDs are compared.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Uuid(pub u64);

impl Uuid {
    /// The UUID of a freshly created, never-synced device (`UUID_JUST_CREATED`).
    pub const JUST_CREATED: Uuid = Uuid(4);

    /// The value with bit 0 cleared, as the handshake compares it.
    pub fn masked(self) -> u64 {
        self.0 & !1
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_and_uuids() {
        assert_eq!(Sector::from_bytes(4096), Some(Sector(8)));
        assert_eq!(Sector::from_bytes(100), None);
        assert_eq!(Sector(3).bytes(), 1536);
        assert_eq!(Uuid(0x1235).masked(), 0x1234);
        assert_eq!(Uuid(0xab).to_string(), "00000000000000AB");
    }
}
