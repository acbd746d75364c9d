//! `drbdadm -d CMD RES` against drbd-utils' `drbdadm-84 -d CMD RES` for every corpus resource on
//! each of its nodes: the drbdsetup-84 and drbdmeta command lines, in the same order. The oracle
//! names drbdsetup by the path it was started from (`/lib/drbd/drbdsetup-84`); ours by name, as
//! drbdadm does when it is found on `PATH`.

mod common;

use common::*;

/// Commands whose dry run does not depend on a running node (`adjust` with no daemon running
/// plans everything, as drbdadm-84 does with no kernel module).
const COMMANDS: &[&[&str]] = &[
    &["up"],
    &["adjust"],
    &["down"],
    &["attach"],
    &["detach"],
    &["primary"],
    &["primary", "--force"],
    &["--", "--overwrite-data-of-peer", "primary"],
    &["secondary"],
    &["invalidate"],
    &["invalidate-remote"],
    &["outdate"],
    &["wait-connect"],
    &["new-current-uuid"],
    &["new-current-uuid", "--clear-bitmap"],
    &["connect"],
    &["connect", "--discard-my-data"],
    &["connect", "--discard-my-data=no"],
    &["--", "--discard-my-data", "connect"],
    &["--", "--discard-my-data", "adjust"],
    &["disconnect"],
    &["create-md"],
    &["create-md", "--force"],
    &["dump-md"],
    &["get-gi"],
    &["show-gi"],
    &["apply-al"],
    &["wipe-md"],
    &["role"],
    &["cstate"],
    &["dstate"],
    &["status"],
];

#[test]
fn dry_runs_match_drbdadm_84() {
    let Some(_) = oracle() else { return };
    // No daemon answers here, so `adjust` sees nothing up.
    let run_dir = std::env::temp_dir().join(format!("tandem-dry-run-{}", std::process::id()));
    assert!(!run_dir.exists());
    let mut compared = 0;
    for f in files("v84") {
        let d = f.parent().unwrap();
        let n = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut text = std::fs::read_to_string(&f).unwrap();
        for inc in files("v84/inc") {
            text.push_str(&std::fs::read_to_string(inc).unwrap());
        }
        for node in host_names(&text) {
            for res in resource_names(&text) {
                for cmd in COMMANDS {
                    let (pre, rest) = match cmd.first() {
                        Some(&"--") => cmd.split_at(2),
                        _ => cmd.split_at(0),
                    };
                    let mut args = vec!["-c", n.as_str(), "-d"];
                    args.extend(pre);
                    args.extend(rest);
                    args.push(&res);
                    let want = run_oracle(d, Some(&node), &args);
                    if want.code != 0 {
                        // Not for this node, stacked, or not understood by drbdadm-84.
                        continue;
                    }
                    // `--node` before `--`, which run_ours would append after it.
                    let mut ours = vec!["--run-dir", run_dir.to_str().unwrap(), "--node", &node];
                    ours.extend(&args);
                    let got = run_ours(d, None, &ours);
                    assert_same_plan(&got, &want, &format!("{n} as {node}: drbdadm {args:?}"));
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 200, "compared {compared} dry runs");
}

/// `RES/VOL` (and `minor-N`) for every volume of the multi-volume corpus resources: the per-volume commands
/// (`up` among them) print that volume's lines, the whole-resource ones refuse as drbdadm-84
/// refuses.
#[test]
fn volume_dry_runs_match_drbdadm_84() {
    let Some(_) = oracle() else { return };
    let run_dir = std::env::temp_dir().join(format!("tandem-dry-run-vol-{}", std::process::id()));
    let mut compared = 0;
    let mut up_volume = 0;
    for f in files("v84") {
        let d = f.parent().unwrap();
        let n = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        if !text.contains("volume 1") {
            continue;
        }
        for node in host_names(&text) {
            // `RES/VOL`, and `minor-N` for the same volumes.
            let mut ids: Vec<String> = (0..4).map(|m| format!("minor-{m}")).collect();
            for res in resource_names(&text) {
                ids.extend((0..3).map(|v| format!("{res}/{v}")));
            }
            for id in &ids {
                for cmd in COMMANDS {
                    if cmd.first() == Some(&"--") {
                        continue;
                    }
                    let mut args = vec!["-c", n.as_str(), "-d"];
                    args.extend(*cmd);
                    args.push(id);
                    let want = run_oracle(d, Some(&node), &args);
                    let mut ours = vec!["--run-dir", run_dir.to_str().unwrap(), "--node", &node];
                    ours.extend(&args);
                    let got = run_ours(d, None, &ours);
                    if want.code != 0 {
                        if want.stderr.contains("operates on whole resources")
                            || want.stderr.contains("not defined in your config")
                        {
                            // The oracle first says which node it pretends to be.
                            let last = want.stderr.lines().last().unwrap_or("");
                            assert_eq!(
                                (got.stderr.trim_end(), got.code),
                                (last, want.code),
                                "{n} as {node}: drbdadm {args:?}"
                            );
                            compared += 1;
                        }
                        continue;
                    }
                    assert_same_plan(&got, &want, &format!("{n} as {node}: drbdadm {args:?}"));
                    compared += 1;
                    if cmd == &["up"] && id.contains('/') {
                        // `up RES/VOL`: new-resource, that volume's new-minor and attach, connect.
                        assert!(got.stdout.contains("new-minor"), "{}", got.stdout);
                        up_volume += 1;
                    }
                }
            }
        }
    }
    assert!(compared > 50, "compared {compared} dry runs");
    assert!(
        up_volume >= 2,
        "compared {up_volume} dry runs of up RES/VOL"
    );
}

/// Our dry run printed what drbdadm-84's did (drbdsetup named as on `PATH`) and succeeded.
fn assert_same_plan(got: &Run, want: &Run, what: &str) {
    let want_out = want
        .stdout
        .replace("/lib/drbd/drbdsetup-84", "drbdsetup-84");
    assert_eq!(
        (got.stdout.as_str(), got.code),
        (want_out.as_str(), 0),
        "{what}\nstderr: {}",
        got.stderr
    );
}
