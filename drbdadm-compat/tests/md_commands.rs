//! The offline metadata commands of `drbdadm`, run as a process on temp files and compared
//! with drbd-utils' `drbdmeta` on the same files. Skipped when `drbdmeta` is not installed,
//! except under CI.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use repl_core::al::{ActivityLog, Admission, Extent, EXTENT_SECTORS};
use repl_core::bitmap::Bitmap;
use repl_core::meta::{self, AlGeometry, Layout, MdFlags, MetaWrite, Superblock, BLOCK_BYTES};
use repl_core::types::{Sector, Uuid};
use repl_core::uuid::GenerationUuids;

const MIB: u64 = 1 << 20;

/// Finds a tool on PATH or in /sbin; `None` (with a message) outside CI.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    let found = dirs.map(|d: PathBuf| d.join(name)).find(|p| p.is_file());
    match found {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => panic!("{name} is required in CI"),
        None => {
            println!("skipping: {name} is not installed");
            None
        }
    }
}

/// A volume on alice: minor, disk file, `internal` or meta-disk file.
type Vol<'a> = (u32, &'a str, &'a str);

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "tandem-md-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }

    /// A sparse file of `bytes` in the directory.
    fn file(&self, name: &str, bytes: u64) -> PathBuf {
        let p = self.0.join(name);
        File::create(&p)
            .and_then(|f| f.set_len(bytes))
            .expect("file");
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `drbd.conf` with resources on nodes alice and bob whose volumes on alice are
    /// `(minor, disk, meta-disk)`; bob's copies point at the same files.
    fn config(&self, resources: &[(&str, &[Vol])]) -> PathBuf {
        let mut s = String::new();
        for (port, (name, vols)) in resources.iter().enumerate() {
            s.push_str(&format!("resource {name} {{\n"));
            for (host, ip) in [("alice", 1), ("bob", 2)] {
                s.push_str(&format!("  on {host} {{\n"));
                for (vnr, (minor, disk, md)) in vols.iter().enumerate() {
                    let disk = self.path(disk);
                    // `m.img [0]` stays an indexed meta-disk after the join.
                    let md = match *md {
                        "internal" => "internal".to_string(),
                        other => self.path(other).display().to_string(),
                    };
                    s.push_str(&format!(
                        "    volume {vnr} {{ device minor {minor}; disk {}; meta-disk {md}; }}\n",
                        disk.display()
                    ));
                }
                s.push_str(&format!("    address 10.0.0.{ip}:{};\n  }}\n", 7789 + port));
            }
            s.push_str("}\n");
        }
        let p = self.path("drbd.conf");
        std::fs::write(&p, s).expect("config");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn output(cmd: &mut Command) -> Run {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Our `drbdadm -c CONF --node alice ARGS...`.
fn ours(conf: &Path, args: &[&str]) -> Run {
    output(
        Command::new(env!("CARGO_BIN_EXE_drbdadm"))
            .arg("-c")
            .arg(conf)
            .args(["--node", "alice"])
            .args(args),
    )
}

/// `drbdmeta --force MINOR v08 FILE INDEX ARGS...` (forced: it refuses regular files else).
fn drbdmeta(dm: &Path, minor: u32, file: &Path, index: &str, args: &[&str]) -> Run {
    output(
        Command::new(dm)
            .args(["--force", &minor.to_string(), "v08"])
            .arg(file)
            .arg(index)
            .args(args),
    )
}

/// A dump without its header (time, host, command line). drbd-utils 8.9 and later print the
/// `flags` of a v08 dump from an unused per-peer field, so always 0; restore-md reads that line
/// back into the real flags, which we print. Compared as drbdmeta prints it.
fn dump_body(dump: &str) -> String {
    dump.lines()
        .skip(3)
        .map(|l| {
            if l.starts_with("    flags 0x") {
                "    flags 0x00000000;"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_all(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read")
}

fn one_line(r: &Run) {
    assert_eq!(r.stdout, "", "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
}

/// Fresh metadata by our create-md and by drbdmeta's is the same, byte for byte, and each
/// tool's dump of either agrees.
#[test]
fn create_md_round_trip_both_ways() {
    let Some(dm) = tool("drbdmeta") else { return };
    for (size, md_size) in [(64 * MIB, 8 * MIB), (64 * MIB + 1536, 4 * MIB + 512)] {
        let t = TempDir::new();
        let a = t.file("a.img", size);
        t.file("c.img", size);
        let m = t.file("m.img", md_size);
        let conf = t.config(&[
            ("r0", &[(0, "a.img", "internal")]),
            ("r1", &[(1, "c.img", "m.img")]),
        ]);
        let r = ours(&conf, &["create-md", "all"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(
            r.stdout,
            "initializing activity log\nWriting meta data...\nNew drbd meta data block successfully created.\n".repeat(2)
        );
        let layout = Layout::internal(size, AlGeometry::default()).expect("layout");
        assert!(r.stderr.starts_with(&format!(
            "initializing bitmap ({} KB) to all zero\n",
            layout.bm_bytes / 1024
        )));

        // drbdmeta accepts ours and dumps what we dump.
        for (minor, file, index, res) in [(0, &a, "internal", "r0"), (1, &m, "flex-external", "r1")]
        {
            let theirs = drbdmeta(&dm, minor, file, index, &["dump-md"]);
            assert_eq!(theirs.code, 0, "{theirs:?}");
            let mine = ours(&conf, &["dump-md", res]);
            assert_eq!(mine.code, 0, "{mine:?}");
            assert_eq!(dump_body(&mine.stdout), dump_body(&theirs.stdout), "{res}");
            for cmd in ["get-gi", "show-gi"] {
                let theirs = drbdmeta(&dm, minor, file, index, &[cmd]);
                assert_eq!(
                    ours(&conf, &[cmd, res]).stdout,
                    theirs.stdout,
                    "{cmd} {res}"
                );
            }
        }

        // drbdmeta's create-md on twins of the files writes the same bytes.
        let a2 = t.file("a2.img", size);
        let m2 = t.file("m2.img", md_size);
        assert_eq!(drbdmeta(&dm, 0, &a2, "internal", &["create-md"]).code, 0);
        assert_eq!(
            drbdmeta(&dm, 1, &m2, "flex-external", &["create-md"]).code,
            0
        );
        assert!(read_all(&a) == read_all(&a2), "internal metadata differs");
        assert!(read_all(&m) == read_all(&m2), "external metadata differs");
    }
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .expect("open")
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

/// A used superblock: UUIDs, size, flags as given.
fn used_superblock(layout: &Layout, flags: MdFlags) -> Superblock {
    Superblock {
        la_size: layout.max_usable,
        uuids: GenerationUuids {
            current: Uuid(0x1234_5678_9ABC_DEF1),
            bitmap: Uuid(0x0F0E_0D0C_0B0A_0908),
            history: [Uuid(0xAAAA_BBBB_CCCC_DDDC), Uuid(0x1111_2222_3333_4444)],
        },
        flags,
        la_peer_max_bio_size: 1 << 20,
        ..Superblock::fresh(layout)
    }
}

/// Metadata in use (UUIDs, flags, size, a bitmap with runs, single bits and a full tail)
/// dumps, get-gi's and show-gi's the same in both tools.
#[test]
fn used_metadata_reads_the_same() {
    let Some(dm) = tool("drbdmeta") else { return };
    let size = 256 * MIB;
    let t = TempDir::new();
    let a = t.file("a.img", size);
    let conf = t.config(&[("r0", &[(0, "a.img", "internal")])]);
    let layout = Layout::internal(size, AlGeometry::default()).expect("layout");
    let f = open_rw(&a);
    let flag_sets = [
        MdFlags::AL_CLEAN,
        MdFlags(0x80 | 0x1 | 0x10 | 0x20),
        MdFlags(0x80 | 0x1 | 0x2 | 0x4 | 0x8 | 0x40),
    ];
    for flags in flag_sets {
        let sb = used_superblock(&layout, flags);
        apply(&f, &meta::create_md(&layout, &sb));
        let mut bm = Bitmap::new(sb.la_size);
        bm.set_bits(1..3).expect("bits");
        bm.set_bits(64 * 9..64 * 40).expect("run");
        bm.set_bits(5000..5001).expect("bit");
        bm.set_bits(bm.bits() - 70..bm.bits()).expect("tail");
        f.write_all_at(&bm.to_bytes(), layout.bm_start())
            .expect("bitmap");
        let theirs = drbdmeta(&dm, 0, &a, "internal", &["dump-md"]);
        let mine = ours(&conf, &["dump-md", "r0"]);
        assert_eq!((mine.code, theirs.code), (0, 0), "{mine:?} {theirs:?}");
        assert_eq!(dump_body(&mine.stdout), dump_body(&theirs.stdout));
        assert!(mine.stdout.contains(&format!("flags 0x{:08X};", flags.0)));
        for cmd in ["get-gi", "show-gi"] {
            let theirs = drbdmeta(&dm, 0, &a, "internal", &[cmd]);
            assert_eq!(ours(&conf, &[cmd, "r0"]).stdout, theirs.stdout, "{cmd}");
        }
    }
    // A size the metadata cannot describe is clipped in the dump, as drbdmeta does.
    let sb = Superblock {
        la_size: Sector(layout.max_usable.0 + 100),
        ..used_superblock(&layout, MdFlags::AL_CLEAN)
    };
    f.write_all_at(&sb.encode(), layout.md_offset).expect("sb");
    let theirs = drbdmeta(&dm, 0, &a, "internal", &["dump-md"]);
    let mine = ours(&conf, &["dump-md", "r0"]);
    assert!(mine.stdout.starts_with("# la-size-sect was too big"));
    assert_eq!(
        mine.stdout.lines().skip(4).collect::<Vec<_>>(),
        theirs
            .stdout
            .lines()
            .skip(4)
            .map(|l| if l.starts_with("    flags") {
                "    flags 0x00000080;"
            } else {
                l
            })
            .collect::<Vec<_>>()
    );
}

/// Writes a crashed node's metadata: hot extents from our activity log, an unclean
/// superblock, `PRIMARY_IND` as asked, the last transaction torn if asked.
fn crashed(path: &Path, size: u64, geom: AlGeometry, primary: bool, torn: bool) {
    let f = open_rw(path);
    let layout = Layout::internal(size, geom).expect("layout");
    let mut sb = used_superblock(&layout, MdFlags(0x80 | 0x1 | 0x10));
    apply(&f, &meta::create_md(&layout, &sb));
    let extents = (layout.max_usable.0 / EXTENT_SECTORS) as u32;
    let mut log = ActivityLog::new(67, geom).expect("log");
    // Many wraps of the ring; the last extent (partly past the bitmap's end) included.
    let seq = (0..150u32).map(|i| i * 7 % extents).chain([extents - 1, 3]);
    for e in seq {
        let at = Sector(u64::from(e) * EXTENT_SECTORS);
        if let Admission::Persist(p) = log.begin_write(at, 8).expect("admit") {
            let bytes = p.transaction.encode().expect("encode");
            f.write_all_at(&bytes, layout.al_block_offset(p.ring_block))
                .expect("tr");
            log.transaction_written(p.transaction.tr_number)
                .expect("written");
        }
        log.end_write(at, 8).expect("end");
    }
    if torn {
        let at = Sector(u64::from(Extent(extents / 2).0) * EXTENT_SECTORS);
        if let Admission::Persist(p) = log.begin_write(at, 8).expect("admit") {
            let bytes = p.transaction.encode().expect("encode");
            f.write_all_at(&bytes[..512], layout.al_block_offset(p.ring_block))
                .expect("torn");
        }
    }
    let mut pre = Bitmap::new(sb.la_size);
    pre.set_bits(9..20).expect("bits");
    f.write_all_at(&pre.to_bytes(), layout.bm_start())
        .expect("bitmap");
    if primary {
        sb.flags = sb.flags.with(MdFlags::PRIMARY_IND);
    }
    f.write_all_at(&sb.attached().encode(), layout.md_offset)
        .expect("sb");
}

/// apply-al on twin files: the same bytes afterwards, the same message.
#[test]
fn apply_al_matches_drbdmeta() {
    let Some(dm) = tool("drbdmeta") else { return };
    let size = 256 * MIB;
    let cases = [
        (AlGeometry::default(), true, false),
        (AlGeometry::default(), true, true),
        (AlGeometry::default(), false, false),
        (AlGeometry::new(2, 8).expect("geometry"), true, true),
    ];
    for (geom, primary, torn) in cases {
        let t = TempDir::new();
        let a = t.file("a.img", size);
        let b = t.file("b.img", size);
        let conf = t.config(&[("r0", &[(0, "a.img", "internal")])]);
        crashed(&a, size, geom, primary, torn);
        crashed(&b, size, geom, primary, torn);
        assert!(read_all(&a) == read_all(&b));
        let unclean = ours(&conf, &["dump-md", "r0"]);
        assert_eq!(unclean.code, 1);
        one_line(&unclean);

        let mine = ours(&conf, &["apply-al", "r0"]);
        let theirs = drbdmeta(&dm, 0, &b, "internal", &["apply-al"]);
        let ctx = format!("{geom:?} primary {primary} torn {torn}");
        assert_eq!(
            (mine.code, theirs.code),
            (0, 0),
            "{ctx} {mine:?} {theirs:?}"
        );
        assert!(read_all(&a) == read_all(&b), "{ctx}: files differ");
        let marked = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("Marked additional"))
                .map(str::to_string)
        };
        assert_eq!(marked(&mine.stderr), marked(&theirs.stderr), "{ctx}");
        assert_eq!(marked(&mine.stderr).is_some(), primary, "{ctx}");
        // Clean now: both dump it the same.
        let theirs = drbdmeta(&dm, 0, &a, "internal", &["dump-md"]);
        let mine = ours(&conf, &["dump-md", "r0"]);
        assert_eq!(mine.code, 0, "{mine:?}");
        assert_eq!(dump_body(&mine.stdout), dump_body(&theirs.stdout), "{ctx}");
        // A second apply-al has nothing to do and writes nothing.
        let before = read_all(&a);
        let again = ours(&conf, &["apply-al", "r0"]);
        assert_eq!((again.code, again.stderr.as_str()), (0, ""));
        assert!(read_all(&a) == before);
    }
}

#[test]
fn wipe_md_matches_drbdmeta() {
    let Some(dm) = tool("drbdmeta") else { return };
    let t = TempDir::new();
    let a = t.file("a.img", 16 * MIB);
    let b = t.file("b.img", 16 * MIB);
    let conf = t.config(&[("r0", &[(0, "a.img", "internal")])]);
    assert_eq!(ours(&conf, &["create-md", "r0"]).code, 0);
    assert_eq!(drbdmeta(&dm, 0, &b, "internal", &["create-md"]).code, 0);
    let before = read_all(&a);
    let refused = ours(&conf, &["wipe-md", "r0"]);
    assert_eq!(refused.code, 1);
    one_line(&refused);
    assert!(read_all(&a) == before);

    let mine = ours(&conf, &["wipe-md", "--force", "r0"]);
    let theirs = drbdmeta(&dm, 0, &b, "internal", &["wipe-md"]);
    assert_eq!((mine.code, theirs.code), (0, 0));
    assert_eq!(mine.stdout, theirs.stdout);
    assert!(read_all(&a) == read_all(&b));
    // Nothing left to wipe: drbdmeta's message, success, nothing written.
    let again = ours(&conf, &["wipe-md", "--force", "r0"]);
    let theirs = drbdmeta(&dm, 0, &b, "internal", &["wipe-md"]);
    assert_eq!((again.code, theirs.code), (0, 0));
    assert_eq!(
        again.stderr,
        "There appears to be no drbd meta data to wipe out?\n"
    );
    assert!(theirs.stderr.contains(again.stderr.trim_end()));
    // And the wiped device has no metadata for the readers.
    for cmd in ["dump-md", "get-gi", "show-gi", "apply-al"] {
        let r = ours(&conf, &[cmd, "r0"]);
        assert_eq!(r.code, 1, "{cmd}");
        one_line(&r);
        assert!(
            r.stderr.starts_with("No valid meta data found on "),
            "{r:?}"
        );
        assert_eq!(drbdmeta(&dm, 0, &b, "internal", &[cmd]).code, 1, "{cmd}");
    }
}

/// Every refusal: one line, non-zero exit, the file unchanged.
#[test]
fn refusals_touch_nothing() {
    let Some(dm) = tool("drbdmeta") else { return };
    let t = TempDir::new();
    let a = t.file("a.img", 8 * MIB);
    let small = t.file("small.img", 64 * 1024);
    let fs = t.file("fs.img", 8 * MIB);
    let m = t.file("m.img", 4 * MIB);
    let conf = t.config(&[
        ("r0", &[(0, "a.img", "internal")]),
        ("small", &[(1, "small.img", "internal")]),
        ("fs", &[(2, "fs.img", "internal")]),
        ("missing", &[(3, "nope.img", "internal")]),
        ("ext", &[(4, "fs.img", "m.img")]),
        ("idx", &[(5, "a.img", "m.img [0]")]),
    ]);
    let refuse = |args: &[&str], file: &Path, code: i32, says: &str| {
        let before = std::fs::read(file).ok();
        let r = ours(&conf, args);
        assert_eq!(r.code, code, "{args:?}: {r:?}");
        one_line(&r);
        assert!(r.stderr.contains(says), "{args:?}: {r:?}");
        assert!(
            std::fs::read(file).ok() == before,
            "{args:?} changed {file:?}"
        );
    };

    // Existing metadata, without --force; with it, a second create-md goes through.
    assert_eq!(ours(&conf, &["create-md", "r0"]).code, 0);
    refuse(
        &["create-md", "r0"],
        &a,
        1,
        "There appears to be a v08 flexible-size internal meta data block already in place on ",
    );
    let forced = ours(&conf, &["create-md", "--force", "r0"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(forced
        .stderr
        .contains("*** confirmation forced via --force option ***"));
    // The `drbdadm -- --force create-md` spelling.
    assert_eq!(ours(&conf, &["--", "--force", "create-md", "r0"]).code, 0);

    // Too small, missing, not for this node, unknown, indexed.
    for cmd in ["create-md", "dump-md", "apply-al"] {
        refuse(&[cmd, "small"], &small, 10, "small.img is only 65536 bytes");
    }
    assert!(drbdmeta(&dm, 1, &small, "internal", &["create-md"]).code == 10);
    refuse(&["create-md", "missing"], &a, 20, "open(");
    refuse(
        &["create-md", "r9"],
        &a,
        1,
        "'r9' not defined in your config (for this host).",
    );
    refuse(&["create-md", "idx"], &m, 20, "meta-disk ");

    // A file system: refused with and without --force when the metadata would truncate it,
    // as drbdmeta does (exit 40).
    if let Some(mkfs) = tool("mkfs.ext4") {
        let ok = Command::new(mkfs)
            .args(["-q", "-F"])
            .arg(&fs)
            .status()
            .expect("mkfs");
        assert!(ok.success());
        refuse(&["create-md", "fs"], &fs, 40, "Found ext3 filesystem on ");
        refuse(
            &["create-md", "--force", "fs"],
            &fs,
            40,
            "Found ext3 filesystem",
        );
        let before = read_all(&fs);
        assert_eq!(drbdmeta(&dm, 2, &fs, "internal", &["create-md"]).code, 40);
        assert!(read_all(&fs) == before);
        // On an external meta-disk any file system is refused.
        std::fs::copy(&fs, &m).expect("copy");
        refuse(
            &["create-md", "--force", "ext"],
            &m,
            40,
            "Found ext3 filesystem",
        );
    }
    // Unknown data at the start: needs --force.
    let f = open_rw(&m);
    f.set_len(0).expect("truncate");
    f.set_len(4 * MIB).expect("len");
    f.write_all_at(b"hello", 100).expect("data");
    refuse(&["create-md", "ext"], &m, 1, "Found some data on ");
    assert_eq!(ours(&conf, &["create-md", "--force", "ext"]).code, 0);

    // Corrupted superblock (magic), then metadata of the wrong size for the device.
    let layout = Layout::internal(8 * MIB, AlGeometry::default()).expect("layout");
    let f = open_rw(&a);
    let mut sb = vec![0u8; BLOCK_BYTES as usize];
    f.read_exact_at(&mut sb, layout.md_offset).expect("read");
    sb[61] ^= 0x40;
    f.write_all_at(&sb, layout.md_offset).expect("corrupt");
    for cmd in ["dump-md", "get-gi", "show-gi", "apply-al"] {
        refuse(&[cmd, "r0"], &a, 1, "No valid meta data found on ");
        assert_eq!(drbdmeta(&dm, 0, &a, "internal", &[cmd]).code, 1);
    }
    sb[61] ^= 0x40;
    f.write_all_at(&sb, layout.md_offset).expect("restore");
    assert_eq!(ours(&conf, &["get-gi", "r0"]).code, 0);
    // Another device size moves where the superblock must be; claim a bigger bitmap instead.
    let big = Layout::internal(256 * MIB, AlGeometry::default()).expect("layout");
    let wrong = Superblock {
        md_size_sect: big.md_size.0 as u32,
        bm_offset: big.bm_offset,
        ..Superblock::decode(&sb).expect("sb")
    };
    f.write_all_at(&wrong.encode(), layout.md_offset)
        .expect("wrong");
    refuse(&["dump-md", "r0"], &a, 1, "No valid meta data found on ");
    assert_eq!(drbdmeta(&dm, 0, &a, "internal", &["dump-md"]).code, 1);

    // A corrupt AL on a crashed Primary cannot be applied: refused, nothing written.
    let t2 = TempDir::new();
    let c = t2.file("c.img", 64 * MIB);
    let conf2 = t2.config(&[("r0", &[(0, "c.img", "internal")])]);
    crashed(&c, 64 * MIB, AlGeometry::default(), true, false);
    let layout = Layout::internal(64 * MIB, AlGeometry::default()).expect("layout");
    let f = open_rw(&c);
    for block in 0..8 {
        f.write_all_at(b"garbage", layout.al_block_offset(block) + 20)
            .expect("garbage");
    }
    let before = read_all(&c);
    let r = ours(&conf2, &["apply-al", "r0"]);
    assert_eq!(r.code, 1, "{r:?}");
    one_line(&r);
    assert!(r.stderr.starts_with("No usable activity log found on "));
    assert!(read_all(&c) == before);
    assert_eq!(drbdmeta(&dm, 0, &c, "internal", &["apply-al"]).code, 1);
}

/// `all`, several resources, `RES/VOL`: only this node's part, each volume by its own device.
#[test]
fn resources_and_volumes() {
    let Some(dm) = tool("drbdmeta") else { return };
    let t = TempDir::new();
    for f in ["a.img", "c.img", "d.img"] {
        t.file(f, 16 * MIB);
    }
    let m0 = t.file("m0.img", 4 * MIB);
    let m1 = t.file("m1.img", 4 * MIB);
    let conf = t.config(&[
        ("r0", &[(0, "a.img", "internal")]),
        ("r1", &[(1, "c.img", "m0.img"), (2, "d.img", "m1.img")]),
    ]);
    let r = ours(&conf, &["create-md", "r1/1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(drbdmeta(&dm, 2, &m1, "flex-external", &["get-gi"]).code, 0);
    assert_eq!(drbdmeta(&dm, 1, &m0, "flex-external", &["get-gi"]).code, 1);
    let r = ours(&conf, &["create-md", "r0", "r1/0"]);
    assert_eq!(r.code, 0, "{r:?}");
    let gi = ours(&conf, &["get-gi", "all"]);
    assert_eq!(gi.code, 0, "{gi:?}");
    assert_eq!(
        gi.stdout,
        "0000000000000004:0000000000000000:0000000000000000:0000000000000000:0:0:0:0:0:0:0\n"
            .repeat(3)
    );
    let gi = ours(&conf, &["get-gi", "r1"]);
    assert_eq!(gi.stdout.lines().count(), 2);
    // A resource that is not on this node.
    let t2 = TempDir::new();
    let conf2 = t2.path("other.conf");
    std::fs::write(
        &conf2,
        "resource r2 { on carol { device minor 7; disk /nonexistent; meta-disk internal; \
         address 10.0.0.3:7789; } on bob { device minor 7; disk /nonexistent; \
         meta-disk internal; address 10.0.0.2:7789; } }\n\
         resource r3 { on alice { device minor 8; disk /nonexistent; meta-disk internal; \
         address 10.0.0.1:7790; } on bob { device minor 8; disk /nonexistent; \
         meta-disk internal; address 10.0.0.2:7790; } }\n",
    )
    .expect("config");
    let r = ours(&conf2, &["create-md", "r2"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "'r2' not defined in your config (for this host).\n"
    );
}
