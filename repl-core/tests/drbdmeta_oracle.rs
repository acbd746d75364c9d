//! drbd-utils' `drbdmeta` as an oracle for the v08 metadata formats: it must read what we write,
//! and we must read what it writes. Skipped when `drbdmeta` is not installed, except under CI.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use repl_core::al::{self, ActivityLog, Admission, Extent, EXTENT_SECTORS};
use repl_core::bitmap::Bitmap;
use repl_core::meta::{
    self, AlGeometry, Layout, MdFlags, MetaWrite, Placement, Superblock, BLOCK_BYTES,
};
use repl_core::types::{Sector, Uuid};
use repl_core::uuid::GenerationUuids;
use tempfile::NamedTempFile;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

struct Drbdmeta(PathBuf);

/// The installed `drbdmeta`, or `None` (with a message) when it is missing outside CI.
fn drbdmeta() -> Option<Drbdmeta> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    let found = dirs
        .map(|d: PathBuf| d.join("drbdmeta"))
        .find(|p| p.is_file());
    match found {
        Some(p) => Some(Drbdmeta(p)),
        None if std::env::var_os("CI").is_some() => panic!("drbdmeta is required in CI"),
        None => {
            println!("skipping: drbdmeta (drbd-utils) is not installed");
            None
        }
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Drbdmeta {
    /// `drbdmeta --force 0 v08 FILE PLACEMENT ARGS...`
    fn run(&self, file: &Path, placement: Placement, args: &[&str]) -> Run {
        let placement = match placement {
            Placement::Internal => "internal",
            Placement::FlexExternal => "flex-external",
        };
        let out = Command::new(&self.0)
            .args(["--force", "0", "v08"])
            .arg(file)
            .arg(placement)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run drbdmeta");
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn must(&self, file: &Path, placement: Placement, args: &[&str]) -> Run {
        let r = self.run(file, placement, args);
        assert!(
            r.ok,
            "drbdmeta {args:?} failed:\n{}\n{}",
            r.stdout, r.stderr
        );
        r
    }
}

fn sparse(bytes: u64) -> NamedTempFile {
    let f = NamedTempFile::new().expect("temp file");
    f.as_file().set_len(bytes).expect("set_len");
    f
}

fn read(f: &File, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0; len as usize];
    f.read_exact_at(&mut buf, offset).expect("read");
    buf
}

fn apply(f: &File, writes: &[MetaWrite]) {
    for w in writes {
        match w {
            MetaWrite::Data { offset, bytes } => f.write_all_at(bytes, *offset).expect("write"),
            MetaWrite::Zeroes { offset, len } => f
                .write_all_at(&vec![0; *len as usize], *offset)
                .expect("zero"),
        }
    }
}

/// A `# name value` or `name value;` line of a dump.
fn dump_value(dump: &str, name: &str) -> i64 {
    dump.lines()
        .map(|l| l.trim_start_matches("# ").trim_end_matches(';'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in dump:\n{dump}"))
}

fn dump_uuids(dump: &str) -> Vec<u64> {
    let start = dump.find("uuid {").expect("uuid block");
    let line = dump[start..].lines().nth(1).expect("uuid line");
    line.split(';')
        .filter_map(|t| u64::from_str_radix(t.trim().strip_prefix("0x")?, 16).ok())
        .collect()
}

/// The words of the `bm { ... }` block: `0xWORD;` and `N times 0xWORD;` entries.
fn dump_bitmap_words(dump: &str) -> Vec<u64> {
    let start = dump.find("bm {").expect("bm block") + 4;
    let end = start + dump[start..].find('}').expect("bm end");
    let body: String = dump[start..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let mut words = Vec::new();
    for entry in body.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (count, word) = match entry.split_once(" times ") {
            Some((n, w)) => (n.parse::<usize>().expect("count"), w),
            None => (1, entry),
        };
        let word = u64::from_str_radix(word.trim_start_matches("0x"), 16).expect("word");
        words.extend(std::iter::repeat_n(word, count));
    }
    words
}

fn words_of(bm: &Bitmap) -> Vec<u64> {
    bm.to_bytes()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// (1) drbdmeta create-md writes exactly what our layout and encoders produce.
#[test]
fn we_read_what_create_md_writes() {
    let Some(dm) = drbdmeta() else { return };
    let cases = [
        (256 * MIB, AlGeometry::default(), vec![]),
        (GIB, AlGeometry::default(), vec![]),
        (256 * MIB + 1536, AlGeometry::default(), vec![]),
        (
            GIB + 4096 * 3 + 512,
            AlGeometry::new(2, 16).expect("geometry"),
            vec!["--al-stripes", "2", "--al-stripe-size-kB", "64"],
        ),
    ];
    for (size, geom, opts) in cases {
        let file = sparse(size);
        let mut args = vec!["create-md"];
        args.extend(opts);
        dm.must(file.path(), Placement::Internal, &args);
        let dump = dm
            .must(file.path(), Placement::Internal, &["dump-md"])
            .stdout;

        let layout = Layout::internal(size, geom).expect("layout");
        let f = file.as_file();
        let raw = read(f, layout.md_offset, BLOCK_BYTES);
        let sb = Superblock::decode(&raw).expect("superblock");
        assert_eq!(
            Layout::of_superblock(&sb, Placement::Internal, size),
            Ok(layout)
        );
        assert_eq!(
            raw,
            Superblock::fresh(&layout).encode(),
            "superblock bytes for {size}"
        );
        assert_eq!(dump_value(&dump, "md_offset"), layout.md_offset as i64);
        assert_eq!(dump_value(&dump, "al_offset"), layout.al_start() as i64);
        assert_eq!(dump_value(&dump, "bm_offset"), layout.bm_start() as i64);
        assert_eq!(dump_value(&dump, "md_size_sect"), layout.md_size.0 as i64);

        let ring = read(f, layout.al_start(), layout.al_bytes());
        assert_eq!(ring, al::initialized_ring(geom), "AL ring for {size}");
        let replay = al::replay(&ring, geom).expect("replay");
        assert!(replay.hot.is_empty() && replay.corrupt == 0);
        assert!(read(f, layout.bm_start(), layout.bm_bytes)
            .iter()
            .all(|&b| b == 0));
    }
}

fn our_superblock(layout: &Layout) -> Superblock {
    Superblock {
        la_size: Sector(layout.max_usable.0 - 1000),
        uuids: GenerationUuids {
            current: Uuid(0x1234_5678_9ABC_DEF1),
            bitmap: Uuid(0x0F0E_0D0C_0B0A_0908),
            history: [Uuid(0xAAAA_BBBB_CCCC_DDDC), Uuid(0x1111_2222_3333_4444)],
        },
        flags: MdFlags::CONSISTENT
            .with(MdFlags::WAS_UP_TO_DATE)
            .with(MdFlags::PEER_OUT_DATED)
            .with(MdFlags::AL_CLEAN),
        la_peer_max_bio_size: 1 << 20,
        ..Superblock::fresh(layout)
    }
}

/// (2) drbdmeta reads metadata we create: UUIDs, flags, size and bitmap.
#[test]
fn drbdmeta_reads_what_we_write() {
    let Some(dm) = drbdmeta() else { return };
    let size = 256 * MIB;
    let file = sparse(size);
    let f = file.as_file();
    let layout = Layout::internal(size, AlGeometry::default()).expect("layout");
    let sb = our_superblock(&layout);
    apply(f, &meta::create_md(&layout, &sb));
    let mut bm = Bitmap::new(sb.la_size);
    bm.set_bits(1..3).expect("bits");
    bm.set_sectors(Sector(100 * MIB / 512), 1).expect("sector");
    bm.set_bits(bm.bits() - 70..bm.bits()).expect("tail");
    for page in bm.take_dirty_pages() {
        let bytes = bm.encode_page(page).expect("page");
        f.write_all_at(&bytes, layout.bm_page_offset(page))
            .expect("write page");
    }

    let dump = dm
        .must(file.path(), Placement::Internal, &["dump-md"])
        .stdout;
    let u = sb.uuids;
    assert_eq!(
        dump_uuids(&dump),
        [u.current.0, u.bitmap.0, u.history[0].0, u.history[1].0]
    );
    assert_eq!(dump_value(&dump, "la-size-sect"), sb.la_size.0 as i64);
    assert_eq!(dump_value(&dump, "la-peer-max-bio-size"), 1 << 20);
    assert_eq!(dump_value(&dump, "bits-set"), bm.count() as i64);
    assert_eq!(dump_bitmap_words(&dump), words_of(&bm));

    // get-gi: four UUIDs, then consistent, was-up-to-date, primary, connected, full-sync,
    // peer-outdated, crashed-primary.
    let gi = dm
        .must(file.path(), Placement::Internal, &["get-gi"])
        .stdout;
    let expected = format!(
        "{}:{}:{}:{}:1:1:0:0:0:1:0",
        u.current, u.bitmap, u.history[0], u.history[1]
    );
    assert_eq!(gi.trim(), expected);
    let show = dm
        .must(file.path(), Placement::Internal, &["show-gi"])
        .stdout;
    assert!(show.contains(&expected), "show-gi:\n{show}");
}

/// Write `tr` into the ring, whole or torn after its first sector.
fn persist(f: &File, layout: &Layout, tr: &al::PendingTransaction, torn: bool) {
    let bytes = tr.transaction.encode().expect("encode");
    let len = if torn { 512 } else { bytes.len() };
    f.write_all_at(&bytes[..len], layout.al_block_offset(tr.ring_block))
        .expect("write tr");
}

/// The size in "Marked additional 16 MB as out-of-sync based on AL.", in KiB.
fn marked_kib(output: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.starts_with("Marked additional"))
        .expect("marked line");
    let mut words = line.split_whitespace().skip(2);
    let n: u64 = words.next().and_then(|n| n.parse().ok()).expect("number");
    let unit = match words.next() {
        Some("KB") => 1,
        Some("MB") => 1 << 10,
        Some("GB") => 1 << 20,
        other => panic!("unit {other:?} in {line}"),
    };
    n * unit
}

/// (3) An unclean, crashed-primary superblock with AL transactions written by our LRU:
/// `apply-al` marks exactly the extents our replay finds, torn last transaction included.
#[test]
fn apply_al_marks_the_extents_our_replay_finds() {
    let Some(dm) = drbdmeta() else { return };
    let striped = AlGeometry::new(4, 4).expect("geometry");
    let default = AlGeometry::default();
    let cases = [
        (true, false, default),
        (true, true, default),
        (false, false, default),
        (true, true, striped),
    ];
    for (primary, torn, geom) in cases {
        let size = GIB;
        let file = sparse(size);
        let f = file.as_file();
        let layout = Layout::internal(size, geom).expect("layout");
        let mut sb = our_superblock(&layout);
        sb.la_size = layout.max_usable;
        apply(f, &meta::create_md(&layout, &sb));

        // 100 slots (the context crosses a sector boundary) and 140 cold extents: evictions
        // and many ring wraps. Extent 255, the last one, is left out: drbdmeta skips an
        // extent that ends exactly at the end of the bitmap, we mark it.
        let mut log = ActivityLog::new(100, geom).expect("log");
        let extents = (0..140u64).map(|i| i * 37 % 250).chain([37, 74, 3]);
        for e in extents {
            // Each write straddles nothing; end it at once so its slot can be reused.
            match log
                .begin_write(Sector(e * EXTENT_SECTORS + 8), 16)
                .expect("admit")
            {
                Admission::Go => {}
                Admission::Wait => panic!("nothing is in flight"),
                Admission::Persist(p) => {
                    persist(f, &layout, &p, false);
                    log.transaction_written(p.transaction.tr_number)
                        .expect("commit");
                }
            }
            log.end_write(Sector(e * EXTENT_SECTORS + 8), 16)
                .expect("end");
        }
        // What is durable now; a torn transaction after this must not change it.
        let mut durable: Vec<Extent> = log.active().collect();
        durable.sort_unstable();
        // One more cold extent whose transaction a crash tears.
        if torn {
            let Admission::Persist(p) = log
                .begin_write(Sector(30 * EXTENT_SECTORS), 8)
                .expect("admit")
            else {
                panic!("extent 30 is cold")
            };
            persist(f, &layout, &p, true);
        }

        let mut pre = Bitmap::new(sb.la_size);
        pre.set_bits(5..6).expect("bit");
        f.write_all_at(&pre.to_bytes(), layout.bm_start())
            .expect("bitmap");
        if primary {
            sb.flags = sb.flags.with(MdFlags::PRIMARY_IND);
        }
        let sb = sb.attached();
        f.write_all_at(&sb.encode(), layout.md_offset)
            .expect("superblock");

        let ring = read(f, layout.al_start(), layout.al_bytes());
        let replay = al::replay(&ring, geom).expect("replay");
        assert_eq!(replay.corrupt, u32::from(torn));
        assert_eq!(
            replay.hot, durable,
            "primary {primary} torn {torn} {geom:?}"
        );

        let run = dm.must(file.path(), Placement::Internal, &["apply-al"]);
        let mut expected = pre.clone();
        if sb.must_apply_al() {
            for &e in &replay.hot {
                expected.set_extent(e);
            }
            let kib = (expected.count() - pre.count()) * 4;
            assert_eq!(marked_kib(&format!("{}{}", run.stdout, run.stderr)), kib);
        }
        let on_disk = Bitmap::from_bytes(pre.bits(), &read(f, layout.bm_start(), layout.bm_bytes))
            .expect("bitmap");
        assert_eq!(
            words_of(&on_disk),
            words_of(&expected),
            "primary {primary} torn {torn} {geom:?}"
        );

        // apply-al leaves clean metadata and a re-initialized ring.
        let after = Superblock::decode(&read(f, layout.md_offset, BLOCK_BYTES)).expect("sb");
        assert_eq!(after, sb.al_applied());
        assert_eq!(
            read(f, layout.al_start(), layout.al_bytes()),
            al::initialized_ring(geom)
        );
    }
}

/// (4) Flexible external metadata: same offsets both ways.
#[test]
fn flex_external_layout_both_ways() {
    let Some(dm) = drbdmeta() else { return };
    for (size, geom, opts) in [
        (8 * MIB, AlGeometry::default(), vec![]),
        (
            33 * MIB + 512,
            AlGeometry::new(4, 4).expect("geometry"),
            vec!["--al-stripes", "4", "--al-stripe-size-kB", "16"],
        ),
    ] {
        let layout = Layout::flex_external(size, geom).expect("layout");
        let file = sparse(size);
        let mut args = vec!["create-md"];
        args.extend(opts);
        dm.must(file.path(), Placement::FlexExternal, &args);
        let f = file.as_file();
        let raw = read(f, 0, BLOCK_BYTES);
        let sb = Superblock::decode(&raw).expect("superblock");
        assert_eq!(
            Layout::of_superblock(&sb, Placement::FlexExternal, size),
            Ok(layout)
        );
        assert_eq!(raw, Superblock::fresh(&layout).encode());
        assert_eq!(
            read(f, layout.al_start(), layout.al_bytes()),
            al::initialized_ring(geom)
        );
        let dump = dm
            .must(file.path(), Placement::FlexExternal, &["dump-md"])
            .stdout;
        assert_eq!(dump_value(&dump, "md_offset"), 0);
        assert_eq!(dump_value(&dump, "al_offset"), layout.al_start() as i64);
        assert_eq!(dump_value(&dump, "bm_offset"), layout.bm_start() as i64);
        assert_eq!(dump_value(&dump, "md_size_sect"), layout.md_size.0 as i64);

        // Ours, on a fresh file, with a data size only external metadata can describe.
        let file = sparse(size);
        let f = file.as_file();
        let sb = Superblock {
            la_size: Sector(10 * GIB / 512),
            ..our_superblock(&layout)
        };
        assert!(sb.la_size <= layout.max_usable);
        apply(f, &meta::create_md(&layout, &sb));
        let mut bm = Bitmap::new(sb.la_size);
        bm.set_extent(Extent(2000));
        f.write_all_at(&bm.to_bytes(), layout.bm_start())
            .expect("bitmap");
        let dump = dm
            .must(file.path(), Placement::FlexExternal, &["dump-md"])
            .stdout;
        assert_eq!(dump_value(&dump, "la-size-sect"), sb.la_size.0 as i64);
        assert_eq!(dump_value(&dump, "bits-set"), 1024);
        assert_eq!(dump_bitmap_words(&dump), words_of(&bm));
    }
}
