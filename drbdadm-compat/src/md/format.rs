//! The text drbdmeta prints for v08 metadata: `get-gi`, `show-gi`, `dump-md` and the bitmap
//! block, as pure functions of the decoded superblock and the on-disk bitmap bytes.

use std::fmt::Write;

use repl_core::meta::{Layout, MdFlags, MdState, Superblock};

/// Bitmap words per output line, in 32-bit units (`WPL` in drbdmeta).
const WORDS_PER_LINE: usize = 8;

/// drbdmeta's `ppsize`: a size in KiB as "N KB", "N MB", ... with at most four digits.
pub fn ppsize(kb: u64) -> String {
    const UNITS: [char; 6] = ['K', 'M', 'G', 'T', 'P', 'E'];
    let mut size = kb;
    let mut base = 0;
    while size >= 10000 && base < UNITS.len() - 1 {
        size = (size >> 10) + ((size >> 9) & 1);
        base += 1;
    }
    format!("{} {}B", size as u32, UNITS[base])
}

fn bit(flags: MdFlags, f: MdFlags) -> u8 {
    u8::from(flags.contains(f))
}

/// The `get-gi` line: four UUIDs, then the seven flag columns.
pub fn gi_line(sb: &Superblock) -> String {
    let u = &sb.uuids;
    let f = sb.flags;
    format!(
        "{:016X}:{:016X}:{:016X}:{:016X}:{}:{}:{}:{}:{}:{}:{}\n",
        u.current.0,
        u.bitmap.0,
        u.history[0].0,
        u.history[1].0,
        bit(f, MdFlags::CONSISTENT),
        bit(f, MdFlags::WAS_UP_TO_DATE),
        bit(f, MdFlags::PRIMARY_IND),
        bit(f, MdFlags::CONNECTED_IND),
        bit(f, MdFlags::FULL_SYNC),
        bit(f, MdFlags::PEER_OUT_DATED),
        bit(f, MdFlags::CRASHED_PRIMARY),
    )
}

/// The annotated `show-gi` output.
pub fn show_gi(sb: &Superblock) -> String {
    let f = sb.flags;
    let mut s = String::from(
        "\n       +--<  Current data generation UUID  >-\n\
         \x20      |               +--<  Bitmap's base data generation UUID  >-\n\
         \x20      |               |                 +--<  younger history UUID  >-\n\
         \x20      |               |                 |         +-<  older history  >-\n\
         \x20      V               V                 V         V\n",
    );
    s.push_str(&gi_line(sb));
    s.push_str(
        "                                                                    ^ ^ ^ ^ ^ ^ ^\n\
         \x20                                     -<  Data consistency flag  >--+ | | | | | |\n\
         \x20                            -<  Data was/is currently up-to-date  >--+ | | | | |\n\
         \x20                                 -<  Node was/is currently primary  >--+ | | | |\n\
         \x20                                 -<  Node was/is currently connected  >--+ | | |\n\
         \x20        -<  Node was in the progress of setting all bits in the bitmap  >--+ | |\n\
         \x20                       -<  The peer's disk was out-dated or inconsistent  >--+ |\n\
         \x20     -<  This node was a crashed primary, and has not seen its peer since   >--+\n\
         \n",
    );
    let disk = if !f.contains(MdFlags::CONSISTENT) {
        "Inconsistent"
    } else if f.contains(MdFlags::WAS_UP_TO_DATE) {
        "UpToDate"
    } else {
        "Outdated"
    };
    let _ = writeln!(
        s,
        "flags:{} {}, {}, {}{}{}",
        if f.contains(MdFlags::CRASHED_PRIMARY) {
            " crashed"
        } else {
            ""
        },
        if f.contains(MdFlags::PRIMARY_IND) {
            "Primary"
        } else {
            "Secondary"
        },
        if f.contains(MdFlags::CONNECTED_IND) {
            "Connected"
        } else {
            "StandAlone"
        },
        disk,
        if f.contains(MdFlags::FULL_SYNC) {
            ", need full sync"
        } else {
            ""
        },
        if f.contains(MdFlags::PEER_OUT_DATED) {
            ", peer Outdated"
        } else {
            ""
        },
    );
    let _ = writeln!(
        s,
        "meta-data: {}",
        if f.contains(MdFlags::AL_CLEAN) {
            "clean"
        } else {
            "need apply-al"
        }
    );
    if sb.la_size.0 != 0 {
        let _ = writeln!(
            s,
            "last agreed size: {} ({} sectors)",
            ppsize(sb.la_size.0 >> 1),
            sb.la_size.0
        );
        let _ = writeln!(
            s,
            "last agreed max bio size: {} Byte",
            sb.la_peer_max_bio_size
        );
    } else {
        s.push_str("zero size device -- never seen peer yet?\n");
    }
    s
}

fn word(bm: &[u8], i: usize) -> u32 {
    let b = &bm[4 * i..4 * i + 4];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn end_of_line(s: &mut String, i: usize) {
    if i.is_multiple_of(64) {
        let _ = write!(s, "\n   # at {}kB\n   ", 128 * i as u64);
    } else {
        s.push_str("\n   ");
    }
}

/// The `{ ... }` block of `bm`, in drbdmeta's run-length form (`fprintf_bm`), and the number
/// of bits set. `bm` is a whole number of 64-bit little-endian words.
pub fn bitmap_block(bm: &[u8]) -> (String, u64) {
    let n = bm.len() / 4;
    let mut s = String::from("{");
    let mut bits = 0u64;
    let mut low = 0u32;
    let mut i = 0;
    while i < n {
        let w = word(bm, i);
        if i % WORDS_PER_LINE == 0 {
            end_of_line(&mut s, i);
            let run = (i..n).take_while(|&j| word(bm, j) == w).count();
            let run = run / WORDS_PER_LINE * WORDS_PER_LINE;
            if run > WORDS_PER_LINE {
                let _ = write!(s, " {} times 0x{w:08X}{w:08X};", run / 2);
                bits += run as u64 * u64::from(w.count_ones());
                i += run;
                continue;
            }
        }
        if i % 2 == 0 {
            low = w;
        } else {
            let _ = write!(s, " 0x{w:08X}{low:08X};");
        }
        bits += u64::from(w.count_ones());
        i += 1;
    }
    s.push_str("\n}\n");
    (s, bits)
}

/// The largest data size the metadata can describe (`max_usable_sectors`), in sectors.
pub fn max_usable(sb: &Superblock, layout: &Layout) -> u64 {
    match layout.placement {
        repl_core::meta::Placement::Internal => layout.max_usable.0,
        repl_core::meta::Placement::FlexExternal => {
            let bm_sectors = i64::from(sb.md_size_sect) - i64::from(sb.bm_offset);
            // 512 bytes * 8 bits per sector of bitmap, 8 sectors per bit.
            u64::try_from(bm_sectors).unwrap_or(0) * 512 * 8 * 8
        }
    }
}

/// Everything of a `dump-md` after its header: the offsets, the UUID block, the fields, the
/// bitmap of `bm` (the bitmap bytes of the clipped `la-size-sect`).
pub fn dump_body(sb: &Superblock, layout: &Layout, la_size: u64, bm: &[u8]) -> String {
    let mut s = String::from("version \"v08\";\n\n");
    if sb.state == MdState::Unclean || !sb.flags.contains(MdFlags::AL_CLEAN) {
        s.push_str(
            "This_is_an_unclean_meta_data_dump._Don't_trust_the_bitmap.\n\
             # You should \"apply-al\" first, if you plan to restore this.\n\n",
        );
    }
    let _ = writeln!(s, "# md_size_sect {}", sb.md_size_sect);
    let _ = writeln!(s, "# md_offset {}", layout.md_offset);
    let _ = writeln!(s, "# al_offset {}", layout.al_start());
    let _ = writeln!(s, "# bm_offset {}", layout.bm_start());
    s.push('\n');
    let u = &sb.uuids;
    let _ = write!(
        s,
        "uuid {{\n    0x{:016X}; 0x{:016X}; 0x{:016X}; 0x{:016X};\n    flags 0x{:08X};\n}}\n",
        u.current.0, u.bitmap.0, u.history[0].0, u.history[1].0, sb.flags.0
    );
    let _ = writeln!(s, "# al-extents {};", sb.al_nr_extents);
    let _ = writeln!(s, "la-size-sect {la_size};");
    let _ = writeln!(s, "bm-byte-per-bit 4096;");
    let _ = writeln!(s, "device-uuid 0x{:016X};", sb.device_uuid);
    let _ = writeln!(
        s,
        "la-peer-max-bio-size {};",
        sb.la_peer_max_bio_size as i32
    );
    let _ = writeln!(s, "al-stripes {};", sb.al.stripes());
    let _ = writeln!(s, "al-stripe-size-4k {};", sb.al.stripe_size_4k());
    let _ = writeln!(s, "# bm-bytes {};", bm.len());
    let (block, bits) = bitmap_block(bm);
    s.push_str("bm ");
    s.push_str(&block);
    let _ = writeln!(s, "# bits-set {bits};");
    s
}

/// drbdmeta's dump header: time, host and the drbdmeta command line drbdadm would run.
pub fn dump_header(unix_secs: u64, host: &str, command_line: &str) -> String {
    format!(
        "# DRBD meta data dump\n# {} +0000 [{unix_secs}]\n# {host}> {command_line}\n#\n\n",
        utc(unix_secs)
    )
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppsize_rounds_like_drbdmeta() {
        assert_eq!(ppsize(8), "8 KB");
        assert_eq!(ppsize(9999), "9999 KB");
        assert_eq!(ppsize(10000), "10 MB");
        assert_eq!(ppsize(262100), "256 MB");
        assert_eq!(ppsize(8192), "8192 KB");
        assert_eq!(ppsize(u64::MAX), "16384 EB");
    }

    #[test]
    fn bitmap_runs_and_lines() {
        let (s, bits) = bitmap_block(&[]);
        assert_eq!((s.as_str(), bits), ("{\n}\n", 0));
        let zero = vec![0u8; 4096];
        let (s, bits) = bitmap_block(&zero);
        assert_eq!(s, "{\n   # at 0kB\n    512 times 0x0000000000000000;\n}\n");
        assert_eq!(bits, 0);
        // One word set in an otherwise empty page: a plain line, then runs again.
        let mut bm = vec![0u8; 4096];
        bm[8] = 0x81;
        let (s, bits) = bitmap_block(&bm);
        assert_eq!(bits, 2);
        assert!(s.starts_with(
            "{\n   # at 0kB\n    0x0000000000000000; 0x0000000000000081; 0x0000000000000000; 0x0000000000000000;\n    508 times"
        ), "{s}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_431_483), "2026-11-23 10:58:03");
    }
}
