//! Numbers with unit suffixes as drbd-utils reads them (`new_strtoll`): `K`, `M`, `G` are powers
//! of 1024, `s` is 512-byte sectors, and each option converts into its own default unit.

use thiserror::Error;

/// Why a number could not be read; the messages are drbd-utils' (they exit 20).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NumError {
    #[error("{0} is not a valid number")]
    Invalid(String),
    #[error("{0}: out of range")]
    OutOfRange(String),
    #[error("missing number argument")]
    Missing,
}

/// The default unit of an option: plain count, KiB or sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    One,
    Kilo,
    Sectors,
}

impl Unit {
    /// The suffix drbdadm prints after numbers in this unit (`k`, `s` or nothing).
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::One => "",
            Unit::Kilo => "k",
            Unit::Sectors => "s",
        }
    }
}

/// `%llu` as sscanf reads it: leading blanks, an optional sign, decimal digits; saturating on
/// overflow and wrapping a negative value, like `strtoull`.
fn scan_ull(s: &[u8]) -> Option<(u64, usize)> {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    let mut overflow = false;
    while i < s.len() && s[i].is_ascii_digit() {
        match v
            .checked_mul(10)
            .and_then(|x| x.checked_add(u64::from(s[i] - b'0')))
        {
            Some(x) => v = x,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start {
        return None;
    }
    if overflow {
        v = u64::MAX;
    } else if neg {
        v = v.wrapping_neg();
    }
    Some((v, i))
}

/// Reads `s` (a number with an optional `K`/`M`/`G`/`s` suffix) in the unit `def`, rounding
/// up when converting a finer suffix into a coarser unit.
///
/// # Errors
/// Not a number, an unknown suffix, or a value that overflows 64 bits.
pub fn strtoll(s: &str, def: Unit) -> Result<u64, NumError> {
    if s.is_empty() {
        return Err(NumError::Missing);
    }
    let b = s.as_bytes();
    let (mut v, used) = scan_ull(b).ok_or_else(|| NumError::Invalid(s.to_string()))?;
    let rest = &b[used..];
    if rest.len() > 1 {
        return Err(NumError::Invalid(s.to_string()));
    }
    let mut shift: i32 = match def {
        Unit::One => 0,
        Unit::Kilo => -10,
        Unit::Sectors => -9,
    };
    match rest.first() {
        None => return Ok(v),
        Some(b'K' | b'k') => shift += 10,
        Some(b'M' | b'm') => shift += 20,
        Some(b'G' | b'g') => shift += 30,
        Some(b's') => shift += 9,
        Some(_) => return Err(NumError::Invalid(s.to_string())),
    }
    if shift < 0 {
        let sh = (-shift) as u32;
        v = v.wrapping_add((1u64 << sh) - 1) >> sh;
        return Ok(v);
    }
    let sh = shift as u32;
    if v > (u64::MAX >> sh) {
        return Err(NumError::OutOfRange(s.to_string()));
    }
    Ok(v << sh)
}

/// C's `atoi` on the digits drbdadm accepts as integers (leading digits only).
pub fn atoi(s: &str) -> u32 {
    scan_ull(s.as_bytes()).map_or(0, |(v, _)| v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_default_units() {
        assert_eq!(strtoll("100G", Unit::Kilo), Ok(104857600));
        assert_eq!(strtoll("10M", Unit::Kilo), Ok(10240));
        assert_eq!(strtoll("1M", Unit::Sectors), Ok(2048));
        assert_eq!(strtoll("1000", Unit::One), Ok(1000));
        assert_eq!(strtoll("1s", Unit::Kilo), Ok(1));
        assert_eq!(strtoll("7K", Unit::One), Ok(7168));
        assert!(matches!(strtoll("x", Unit::One), Err(NumError::Invalid(_))));
        assert!(matches!(
            strtoll("5q", Unit::One),
            Err(NumError::Invalid(_))
        ));
        assert!(matches!(
            strtoll("5MB", Unit::One),
            Err(NumError::Invalid(_))
        ));
        assert!(matches!(
            strtoll("99999999999999999G", Unit::One),
            Err(NumError::OutOfRange(_))
        ));
        assert_eq!(atoi("12M"), 12);
    }
}
