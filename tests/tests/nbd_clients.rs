//! `tandem-nbd` driven by NBD clients that no one here wrote: nbdinfo, qemu-io, qemu-img,
//! nbdcopy, fio's nbd engine, nbd-client and nbdfuse (with a loop device and ext4).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tandem_tests::*;

const MIB: u64 = 1 << 20;

fn serve(size: u64) -> NbdServer {
    NbdServer::start(ServeOpts {
        size,
        ..Default::default()
    })
}

fn read_image(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read image")
}

fn nbdinfo_json(uri: &str) -> serde_json::Value {
    let json = stdout_of(Command::new("nbdinfo").args(["--json", uri]));
    serde_json::from_str(&json).expect("nbdinfo json")
}

#[test]
fn nbdinfo_sees_size_and_every_flag_as_advertised() {
    if !require("nbdinfo", "libnbd-bin") {
        return;
    }
    let s = serve(64 * MIB);
    let v = nbdinfo_json(&s.uri);
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["structured"], true);
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 64 * MIB);
    for flag in [
        "can_cache",
        "can_df",
        "can_fast_zero",
        "can_flush",
        "can_fua",
        "can_multi_conn",
        "can_trim",
        "can_zero",
    ] {
        assert_eq!(e[flag], true, "{flag} in {e}");
    }
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["is_rotational"], false);
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 * MIB);
    assert_eq!(e["contexts"], serde_json::json!(["base:allocation"]));
    // The boolean gates exit 0 (true) or 2 (false).
    for (opt, what, expect) in [
        ("--can", "write", true),
        ("--can", "flush", true),
        ("--is", "read-only", false),
    ] {
        let st = Command::new("nbdinfo")
            .args([opt, what, &s.uri])
            .status()
            .expect("nbdinfo");
        assert_eq!(
            st.code(),
            Some(if expect { 0 } else { 2 }),
            "nbdinfo {opt} {what}"
        );
    }
}

#[test]
fn nbdinfo_on_a_read_only_named_export() {
    if !require("nbdinfo", "libnbd-bin") {
        return;
    }
    let s = NbdServer::start(ServeOpts {
        size: 8 * MIB,
        name: Some("ro".into()),
        read_only: true,
        ..Default::default()
    });
    assert!(s.uri.contains("/ro?"), "{}", s.uri);
    let e = &nbdinfo_json(&s.uri)["exports"][0];
    assert_eq!(e["export-name"], "ro");
    assert_eq!(e["is_read_only"], true);
    for flag in ["can_trim", "can_zero", "can_fast_zero"] {
        assert_eq!(e[flag], false, "{flag} in {e}");
    }
    let st = Command::new("nbdinfo")
        .args(["--can", "write", &s.uri])
        .status()
        .expect("nbdinfo");
    assert_eq!(st.code(), Some(2));
    // The default (empty) name is not served when a name was given.
    let default_uri = s.uri.replace("/ro?", "/?");
    let st = Command::new("nbdinfo")
        .arg(&default_uri)
        .output()
        .expect("nbdinfo");
    assert!(!st.status.success());
}

#[test]
fn nbdinfo_map_reports_holes_and_data() {
    if !require("nbdinfo", "libnbd-bin") {
        return;
    }
    let s = serve(16 * MIB);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&s.image)
            .expect("image");
        f.write_all_at(&[7u8; 65536], 4 * MIB).expect("write");
    }
    let map = stdout_of(Command::new("nbdinfo").args(["--map", &s.uri]));
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // offset length type description
    assert_eq!(rows[0][..3], ["0", &(4 * MIB).to_string(), "3"], "{map}");
    assert_eq!(
        rows[1][..3],
        [&(4 * MIB).to_string()[..], "65536", "0"],
        "{map}"
    );
    assert_eq!(rows[2][2], "3", "{map}");
}

#[test]
fn qemu_io_patterns_unaligned_fua_zeroes_and_out_of_order() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let s = serve(16 * MIB);
    // Fill with a pattern first, so zeroing and discard have something to clear.
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-t",
        "none",
        "-c",
        "w -P 0x5a 0 16M",
        &s.uri,
    ]));
    let cmds = [
        "w -P 0x11 1000 3000",     // unaligned
        "w -f -P 0x22 70001 5000", // unaligned, FUA
        "r -P 0x11 1000 3000",
        "r -P 0x22 70001 5000",
        "w -z 2M 64k",    // WRITE_ZEROES + NO_HOLE
        "w -z -u 3M 64k", // WRITE_ZEROES, may trim
        "w -z -n 4M 64k", // NO_HOLE + FAST_ZERO
        "discard 5M 64k",
        "flush",
        "aio_write -P 0x33 6M 64k",
        "aio_write -P 0x44 7M 1M",
        "aio_read -P 0x5a 9M 512k",
        "aio_write -f -P 0x55 8M 4k",
        "aio_flush",
        "r -P 0x33 6M 64k",
        "r -P 0x44 7M 1M",
        "r -P 0 2M 64k",
        "r -P 0 3M 64k",
        "r -P 0 4M 64k",
    ];
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-t", "none"]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = stdout_of(cmd.arg(&s.uri));
    assert!(!out.contains("failed"), "{out}");
    // Check the backing file itself, independently of the client.
    let img = read_image(&s.image);
    let m = MIB as usize;
    assert!(img[..1000].iter().all(|b| *b == 0x5a));
    assert!(img[1000..4000].iter().all(|b| *b == 0x11));
    assert!(img[4000..70001].iter().all(|b| *b == 0x5a));
    assert!(img[70001..75001].iter().all(|b| *b == 0x22));
    for zeroed in [2 * m, 3 * m, 4 * m] {
        assert!(
            img[zeroed..zeroed + 65536].iter().all(|b| *b == 0),
            "zeroes at {zeroed}"
        );
    }
    assert!(img[6 * m..6 * m + 65536].iter().all(|b| *b == 0x33));
    assert!(img[7 * m..8 * m].iter().all(|b| *b == 0x44));
    assert!(img[8 * m..8 * m + 4096].iter().all(|b| *b == 0x55));
    assert!(img[8 * m + 4096..].iter().all(|b| *b == 0x5a));
}

#[test]
fn qemu_io_writethrough_sets_fua_on_every_write() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let s = serve(4 * MIB);
    // Default cache mode is writethrough: every write carries FUA.
    let out = stdout_of(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "w -P 0x66 512 1536",
        "-c",
        "r -P 0x66 512 1536",
        &s.uri,
    ]));
    assert!(!out.contains("failed"), "{out}");
    let img = read_image(&s.image);
    assert!(img[512..2048].iter().all(|b| *b == 0x66));
    // A pattern check that must fail proves qemu-io verifies what it reads.
    let bad = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "r -P 0x67 512 1536", &s.uri])
        .output()
        .expect("qemu-io");
    assert!(!bad.status.success());
}

#[test]
fn qemu_img_convert_then_compare() {
    if !require("qemu-img", "qemu-utils") {
        return;
    }
    let s = serve(8 * MIB);
    let src = s.dir.path().join("src.img");
    random_file(&src, 8 * MIB as usize, 1);
    let src = src.to_str().expect("utf8 path");
    run_ok(Command::new("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "raw", src, &s.uri]));
    let out = stdout_of(
        Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw", src, &s.uri]),
    );
    assert!(out.contains("Images are identical"), "{out}");
    assert_eq!(sha256(Path::new(src)), sha256(&s.image));
    // Change one byte behind the server's back: compare must notice.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&s.image)
            .expect("image");
        let mut b = [0u8; 1];
        f.read_at(&mut b, 5 * MIB + 3).expect("read");
        f.write_all_at(&[b[0] ^ 0xff], 5 * MIB + 3).expect("write");
    }
    let st = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", src, &s.uri])
        .output()
        .expect("qemu-img");
    assert_eq!(
        st.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
}

#[test]
fn nbdcopy_round_trip_keeps_checksums() {
    if !require("nbdcopy", "libnbd-bin") {
        return;
    }
    let s = serve(24 * MIB);
    let src = s.dir.path().join("src.img");
    // Data with a zero run in the middle, so nbdcopy's sparse path (WRITE_ZEROES) is used.
    random_file(&src, 24 * MIB as usize, 2);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&src)
            .expect("src");
        f.write_all_at(&vec![0u8; 4 * MIB as usize], 8 * MIB)
            .expect("zero run");
    }
    run_ok(
        Command::new("nbdcopy")
            .args(["--flush"])
            .arg(&src)
            .arg(&s.uri),
    );
    let out = s.dir.path().join("out.img");
    run_ok(Command::new("nbdcopy").arg(&s.uri).arg(&out));
    let want = sha256(&src);
    assert_eq!(sha256(&s.image), want);
    assert_eq!(sha256(&out), want);
}

#[test]
fn fio_nbd_engine_verifies_crc32c() {
    if !require("fio", "fio") {
        return;
    }
    let s = serve(64 * MIB);
    let report = s.dir.path().join("fio.json");
    // fio leaves a verify state file in its working directory: keep it in the scratch dir.
    run_ok(Command::new("fio").current_dir(s.dir.path()).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", s.uri),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--size=32M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--output-format=json",
        &format!("--output={}", report.display()),
    ]));
    let text = std::fs::read_to_string(&report).expect("fio report");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("fio json: {e}: {text}"));
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["write"]["io_bytes"], 32 * MIB, "{job}");
    assert_eq!(
        job["read"]["io_bytes"],
        32 * MIB,
        "verify pass read everything back: {job}"
    );
}

#[test]
fn nbd_client_lists_and_negotiates_the_size() {
    if !require("nbd-client", "nbd-client") {
        return;
    }
    let s = NbdServer::start(ServeOpts {
        size: 64 * MIB,
        name: Some("disk1".into()),
        ..Default::default()
    });
    let sock = s.socket.to_str().expect("utf8");
    let list = run_ok(Command::new("nbd-client").args(["-l", "-unix", sock]));
    let text =
        String::from_utf8_lossy(&list.stdout).into_owned() + &String::from_utf8_lossy(&list.stderr);
    assert!(text.lines().any(|l| l.starts_with("disk1")), "{text}");
    // GO with zero info requests (default) and the old EXPORT_NAME path (-g).
    for extra in [&[][..], &["-g"][..]] {
        let mut cmd = Command::new("nbd-client");
        cmd.args(["-unix", sock, "/dev/nbd15", "-N", "disk1"])
            .args(extra);
        if Path::new("/dev/nbd15").exists() {
            eprintln!("SKIP: /dev/nbd15 exists; not attaching a real kernel device in a test");
            return;
        }
        let out = cmd.output().expect("nbd-client");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("size = 64MB"), "nbd-client {extra:?}: {text}");
        assert!(
            text.contains("bs=") || text.contains("Negotiation"),
            "{text}"
        );
    }
}

#[test]
fn nbdfuse_loop_ext4_file_round_trip() {
    if !is_root() {
        eprintln!("SKIP: nbdfuse + loop + mount needs root");
        return;
    }
    if !require("nbdfuse", "libnbd-bin")
        || !require("mkfs.ext4", "e2fsprogs")
        || !require("losetup", "mount")
    {
        return;
    }
    let s = serve(64 * MIB);
    let mut cleanup = Cleanup::default();
    let fuse_dir = s.dir.path().join("fuse");
    let fs_dir = s.dir.path().join("fs");
    std::fs::create_dir_all(&fuse_dir).expect("mkdir");
    std::fs::create_dir_all(&fs_dir).expect("mkdir");
    let pidfile = s.dir.path().join("nbdfuse.pid");
    let fuse = Command::new("nbdfuse")
        .arg("-P")
        .arg(&pidfile)
        .arg(fuse_dir.join("disk"))
        .arg(&s.uri)
        .spawn()
        .expect("nbdfuse");
    let mut fuse = Proc {
        child: fuse,
        name: "nbdfuse".into(),
    };
    let fd = fuse_dir.clone();
    cleanup.push("fusermount3 -u", move || {
        let _ = Command::new("fusermount3").arg("-u").arg(&fd).status();
    });
    assert!(
        wait_for_path(&pidfile, Duration::from_secs(30)),
        "nbdfuse did not become ready"
    );
    let disk = fuse_dir.join("disk");
    let loopdev = stdout_of(
        Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&disk),
    )
    .trim()
    .to_string();
    assert!(loopdev.starts_with("/dev/loop"), "{loopdev}");
    let ld = loopdev.clone();
    cleanup.push("losetup -d", move || {
        let _ = Command::new("losetup").args(["-d", &ld]).status();
    });
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &loopdev]));
    let payload = s.dir.path().join("payload.bin");
    random_file(&payload, 5 * MIB as usize + 123, 3);
    let want = sha256(&payload);
    for round in 0..2 {
        run_ok(Command::new("mount").arg(&loopdev).arg(&fs_dir));
        let fsd = fs_dir.clone();
        cleanup.push("umount", move || {
            let _ = Command::new("umount").arg(&fsd).status();
        });
        let inside = fs_dir.join("payload.bin");
        if round == 0 {
            std::fs::copy(&payload, &inside).expect("copy into ext4");
            run_ok(Command::new("sync").arg("-f").arg(&inside));
        }
        assert_eq!(sha256(&inside), want, "round {round}");
        run_ok(Command::new("umount").arg(&fs_dir));
    }
    run_ok(Command::new("e2fsck").args(["-f", "-n", &loopdev]));
    run_ok(Command::new("losetup").args(["-d", &loopdev]));
    run_ok(Command::new("fusermount3").arg("-u").arg(&fuse_dir));
    let st = fuse.child.wait().expect("nbdfuse exit");
    assert!(st.success(), "nbdfuse exited {st}");
    // The file system reached the server's backing file: it holds an ext4 superblock magic.
    let img = read_image(&s.image);
    assert_eq!(&img[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
    drop(cleanup);
}

#[test]
fn pread_fallback_engine_serves_and_says_so() {
    if !require("qemu-io", "qemu-utils") {
        return;
    }
    let s = NbdServer::start(ServeOpts {
        size: 4 * MIB,
        extra: vec!["--io-engine".into(), "threads".into()],
        ..Default::default()
    });
    assert!(
        s.log().contains("disk I/O: pread/pwrite threads"),
        "{}",
        s.log()
    );
    let out = stdout_of(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "w -P 0x3c 4095 70000",
        "-c",
        "r -P 0x3c 4095 70000",
        "-c",
        "flush",
        &s.uri,
    ]));
    assert!(!out.contains("failed"), "{out}");
    assert!(read_image(&s.image)[4095..74095].iter().all(|b| *b == 0x3c));
    let default = serve(MIB);
    assert!(
        default.log().contains("disk I/O: io_uring"),
        "{}",
        default.log()
    );
}

#[test]
fn direct_io_advertises_4k_blocks_and_round_trips() {
    if !require("qemu-io", "qemu-utils") || !require("nbdinfo", "libnbd-bin") {
        return;
    }
    let s = NbdServer::start(ServeOpts {
        size: 8 * MIB,
        extra: vec!["--direct".into()],
        ..Default::default()
    });
    let e = &nbdinfo_json(&s.uri)["exports"][0];
    assert_eq!(e["block_size_minimum"], 4096);
    // qemu obeys the minimum and read-modify-writes the unaligned edges itself.
    let out = stdout_of(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-t",
        "none",
        "-c",
        "w -P 0x42 1000 100000",
        "-c",
        "r -P 0x42 1000 100000",
        &s.uri,
    ]));
    assert!(!out.contains("failed"), "{out}");
    let img = read_image(&s.image);
    assert!(img[1000..101_000].iter().all(|b| *b == 0x42));
    assert!(img[..1000].iter().all(|b| *b == 0));
}

#[test]
fn a_block_device_is_served_with_all_data_status() {
    if !is_root() {
        eprintln!("SKIP: loop devices need root");
        return;
    }
    if !require("losetup", "mount")
        || !require("qemu-io", "qemu-utils")
        || !require("nbdinfo", "libnbd-bin")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(16 * MIB))
        .expect("backing");
    let mut cleanup = Cleanup::default();
    let loopdev = stdout_of(
        Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing),
    )
    .trim()
    .to_string();
    let ld = loopdev.clone();
    cleanup.push("losetup -d", move || {
        let _ = Command::new("losetup").args(["-d", &ld]).status();
    });
    let sock = dir.path().join("nbd.sock");
    let mut cmd = Command::new(bin("tandem-nbd"));
    cmd.args(["serve", &loopdev, "--socket"]).arg(&sock);
    let (mut server, banner) = spawn_until(cmd, "serving ");
    assert!(
        banner.contains(&format!("({} bytes)", 16 * MIB)),
        "{banner}"
    );
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let map = stdout_of(Command::new("nbdinfo").args(["--map", &uri]));
    assert_eq!(
        map.lines().count(),
        1,
        "a block device reports one all-data extent: {map}"
    );
    assert!(map.contains("data"), "{map}");
    let out = stdout_of(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-t",
        "none",
        "-c",
        "w -P 0x99 1M 1M",
        "-c",
        "w -z 1M 4k",
        "-c",
        "discard 1536k 64k",
        "-c",
        "flush",
        "-c",
        "r -P 0 1M 4k",
        "-c",
        "r -P 0x99 1052672 4096",
        &uri,
    ]));
    assert!(!out.contains("failed"), "{out}");
    assert!(server.signal_and_wait(libc::SIGTERM).success());
    let img = read_image(&backing);
    assert!(img[MIB as usize + 4096..MIB as usize + 8192]
        .iter()
        .all(|b| *b == 0x99));
    drop(cleanup);
}
