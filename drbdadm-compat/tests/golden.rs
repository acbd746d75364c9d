//! Golden tests: every corpus file through drbd-utils' `drbdadm-84` and through ours.

mod common;

use common::*;
use std::path::Path;

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// `dump all` as this machine (no host section matches): stdout, stderr and exit code equal,
/// for the valid files and the broken ones.
#[test]
fn dump_all_matches_oracle_for_every_corpus_file() {
    let Some(_) = oracle() else { return };
    let mut checked = 0;
    for dir in ["v84", "bad"] {
        for f in files(dir) {
            let d = f.parent().unwrap();
            let n = name(&f);
            let want = run_oracle(d, None, &["-c", &n, "dump", "all"]);
            let got = run_ours(d, None, &["-c", &n, "dump", "all"]);
            assert_eq!(got, want, "{dir}/{n}");
            checked += 1;
        }
    }
    assert!(checked >= 16, "corpus has {checked} files");
}

/// As each node the file names: `dump all` and `dump RES` (stdout and exit code; the oracle adds
/// a notice on stderr when pretending to be another node).
#[test]
fn dump_as_each_node_matches_oracle() {
    let Some(_) = oracle() else { return };
    for f in files("v84") {
        let d = f.parent().unwrap();
        let n = name(&f);
        let mut text = std::fs::read_to_string(&f).unwrap();
        for inc in files("v84/inc") {
            text.push_str(&std::fs::read_to_string(inc).unwrap());
        }
        for node in host_names(&text) {
            let mut cmds = vec![vec!["dump".to_string(), "all".to_string()]];
            for r in resource_names(&text) {
                cmds.push(vec!["dump".into(), r.clone()]);
                cmds.push(vec!["dump".into(), format!("{r}/0")]);
            }
            for c in cmds {
                let mut args = vec!["-c", n.as_str()];
                args.extend(c.iter().map(String::as_str));
                let want = run_oracle(d, Some(&node), &args);
                let got = run_ours(d, Some(&node), &args);
                assert_eq!(
                    (got.stdout, got.code),
                    (want.stdout, want.code),
                    "{n} as {node}: {c:?}"
                );
            }
        }
    }
}

/// The `sh-*` helpers, for `all` and each resource, as each node.
#[test]
fn sh_helpers_match_oracle() {
    let Some(_) = oracle() else { return };
    let cmds = [
        "sh-resources",
        "sh-dev",
        "sh-minor",
        "sh-ll-dev",
        "sh-md-dev",
        "sh-md-idx",
        "sh-ip",
        "sh-lr-of",
    ];
    for f in files("v84") {
        let d = f.parent().unwrap();
        let n = name(&f);
        let mut text = std::fs::read_to_string(&f).unwrap();
        for inc in files("v84/inc") {
            text.push_str(&std::fs::read_to_string(inc).unwrap());
        }
        let mut nodes = host_names(&text);
        nodes.push("nobody".into());
        let mut targets = vec!["all".to_string()];
        targets.extend(resource_names(&text));
        for node in &nodes {
            for c in cmds {
                for t in &targets {
                    let args = ["-c", n.as_str(), c, t.as_str()];
                    let want = run_oracle(d, Some(node), &args);
                    let got = run_ours(d, Some(node), &args);
                    assert_eq!(
                        (got.stdout, got.code),
                        (want.stdout, want.code),
                        "{n} as {node}: {c} {t}"
                    );
                }
            }
        }
    }
}

/// DRBD 9 two-node files load (exit 0) and resolve for each of their nodes.
#[test]
fn v9_files_are_accepted_into_the_model() {
    use drbdadm_compat::cli::{load, Invocation};
    use drbdadm_compat::res::resolve::resolve;
    use drbdadm_compat::res::validate::NodeEnv;
    let v9 = files("v9");
    if v9.is_empty() {
        eprintln!("SKIPPED: no v9 corpus");
        return;
    }
    for f in v9 {
        let d = f.parent().unwrap();
        let n = name(&f);
        let got = run_ours(d, None, &["-c", &n, "dump", "all"]);
        assert_eq!(got.code, 0, "{n}: {}", got.stderr);
        let text = std::fs::read_to_string(&f).unwrap();
        let mut nodes = host_names(&text);
        // `floating` sections match by address.
        let mut envs: Vec<NodeEnv> = nodes
            .drain(..)
            .map(|nodename| NodeEnv {
                nodename,
                ..NodeEnv::default()
            })
            .collect();
        for w in text.split_whitespace().collect::<Vec<_>>().windows(2) {
            if w[0] == "floating" {
                let ip = w[1].split(':').next().unwrap();
                envs.push(NodeEnv {
                    nodename: "x".into(),
                    v4: vec![ip.parse().unwrap()],
                    v6: vec![],
                });
            }
        }
        assert!(!envs.is_empty());
        for env in envs {
            let inv = Invocation {
                config: Some(n.clone()),
                command: "dump".into(),
                cwd: d.to_path_buf(),
                no_tty: true,
                ..Invocation::default()
            };
            let loaded = load(&inv, &env).unwrap_or_else(|o| panic!("{n}: {}", o.stderr));
            for r in &loaded.config.resources {
                let e = resolve(&loaded.config, r, &env.nodename)
                    .unwrap_or_else(|e| panic!("{n} {}: {e}", env.nodename));
                assert!(!e.volumes.is_empty());
                assert!(e.peer.is_some());
            }
        }
    }
}

/// Extra fixtures (stacked, floating IPv6, proxy and plugins, include loops, indexed meta-disk,
/// range and duplicate errors): every command as several nodes, stdout, stderr and exit code.
#[test]
fn fixtures_match_oracle_for_all_commands() {
    let Some(_) = oracle() else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cmds: &[&[&str]] = &[
        &["dump", "all"],
        &["dump", "up"],
        &["sh-resources"],
        &["sh-dev", "all"],
        &["sh-md-idx", "all"],
        &["sh-md-dev", "all"],
        &["sh-ip", "all"],
        &["-S", "sh-lr-of", "all"],
        &["-S", "dump", "all"],
        &["sh-dev", "a"],
        &["sh-minor", "b/0"],
        &["sh-dev", "minor-2"],
    ];
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.is_empty() && !l.contains("__DRBD_NODE__") && !l.contains("PRETENDING"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    for f in [
        "stk.res",
        "loop.res",
        "range.res",
        "dupaddr.res",
        "mix.res",
        "eof3.res",
    ] {
        for node in ["vm-none", "x", "y", "z"] {
            for c in cmds {
                let mut args = vec!["-c", f];
                args.extend_from_slice(c);
                let want = run_oracle(&dir, Some(node), &args);
                let got = run_ours(&dir, Some(node), &args);
                assert_eq!(
                    (&got.stdout, strip(&got.stderr), got.code),
                    (&want.stdout, strip(&want.stderr), want.code),
                    "{f} as {node}: {c:?}"
                );
            }
        }
    }
}
