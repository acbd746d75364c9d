//! Small value types shared across the engine.

use std::fmt;

/// A 512-byte sector number or count, DRBD's unit for sizes and offsets.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
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
/// masked off when UUIDs are compared. Serialized as DRBD prints it: 16 upper-case hex digits.
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

impl serde::Serialize for Uuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Uuid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        u64::from_str_radix(&s, 16)
            .map(Uuid)
            .map_err(|e| serde::de::Error::custom(format!("bad UUID {s:?}: {e}")))
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

    #[test]
    fn uuids_serialize_as_drbd_prints_them() {
        let j = serde_json::to_string(&Uuid(0x1234_5678_9ABC_DEF1)).unwrap();
        assert_eq!(j, "\"123456789ABCDEF1\"");
        assert_eq!(
            serde_json::from_str::<Uuid>(&j).unwrap(),
            Uuid(0x1234_5678_9ABC_DEF1)
        );
        assert!(serde_json::from_str::<Uuid>("\"xyz\"").is_err());
        assert_eq!(serde_json::to_string(&Sector(8)).unwrap(), "8");
    }
}
