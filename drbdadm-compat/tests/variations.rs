//! Property tests: generated configurations (random option subsets and values, some invalid or
//! out of range, 8.3 forms, random whitespace and comments) dumped by both tools.

mod common;

use common::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Options with values to pick from, per section; values starting with `!` are invalid or out
/// of range and are picked rarely.
const NET: &[(&str, &[&str])] = &[
    ("protocol", &["A", "B", "C", "c", "!D"]),
    ("timeout", &["60", "6", "!0", "!601"]),
    ("connect-int", &["10", "!121"]),
    ("ping-int", &["10", "1"]),
    ("ping-timeout", &["5", "300"]),
    ("max-buffers", &["8000", "128K", "!31"]),
    ("max-epoch-size", &["8000", "!20001"]),
    ("ko-count", &["7", "0"]),
    ("sndbuf-size", &["0", "10M", "!11M"]),
    ("cram-hmac-alg", &["sha1", "\"sha256\""]),
    (
        "shared-secret",
        &["s3cr3t", "\"with space\"", "\"q\\\"uote\""],
    ),
    (
        "after-sb-0pri",
        &["discard-zero-changes", "discard-node-alpha", "disconnect"],
    ),
    ("after-sb-1pri", &["discard-secondary", "consensus"]),
    ("after-sb-2pri", &["disconnect", "call-pri-lost-after-sb"]),
    ("rr-conflict", &["disconnect", "violently"]),
    ("allow-two-primaries", &["", "yes", "no"]),
    ("always-asbp", &["", "no"]),
    ("tcp-cork", &["", "no"]),
    ("no-tcp-cork", &[""]),
    ("verify-alg", &["sha1", "crc32c"]),
    ("csums-alg", &["md5"]),
    ("on-congestion", &["pull-ahead", "block"]),
    ("congestion-fill", &["400M", "!11G"]),
    ("congestion-extents", &["1000", "!66"]),
    ("use-rle", &["", "yes"]),
];
const DISK: &[(&str, &[&str])] = &[
    ("resync-rate", &["10M", "250", "!100G", "!0"]),
    ("rate", &["33M"]),
    ("al-extents", &["3389", "7"]),
    ("on-io-error", &["detach", "pass_on"]),
    ("fencing", &["resource-only", "dont-care"]),
    ("c-plan-ahead", &["20", "!301"]),
    ("c-fill-target", &["1M", "100", "!1G"]),
    ("c-delay-target", &["10", "!0"]),
    ("c-max-rate", &["720M", "!100"]),
    ("c-min-rate", &["20M", "!4G"]),
    ("disk-flushes", &["", "no"]),
    ("no-disk-flushes", &[""]),
    ("md-flushes", &["no"]),
    ("disk-barrier", &["no", "yes"]),
    ("size", &["10G", "1s", "!4096G"]),
    ("disk-timeout", &["0", "6000"]),
];
const STARTUP: &[(&str, &[&str])] = &[
    ("wfc-timeout", &["30", "!300001"]),
    ("degr-wfc-timeout", &["15"]),
    ("outdated-wfc-timeout", &["10"]),
    ("wait-after-sb", &["", "yes", "no"]),
    ("become-primary-on", &["alpha", "both"]),
    ("stacked-timeouts", &[""]),
];
const HANDLERS: &[(&str, &[&str])] = &[
    (
        "split-brain",
        &["\"/usr/lib/drbd/notify-split-brain.sh root\""],
    ),
    ("fence-peer", &["/usr/lib/drbd/crm-fence-peer.sh"]),
    ("outdate-peer", &["/bin/true"]),
    ("pri-lost-after-sb", &["\"echo; reboot -f\""]),
];
const SYNCER: &[(&str, &[&str])] = &[
    ("rate", &["40M"]),
    ("al-extents", &["257"]),
    ("verify-alg", &["md5"]),
    ("csums-alg", &["crc32c"]),
    ("c-plan-ahead", &["0"]),
    ("use-rle", &["", "no"]),
    ("cpu-mask", &["0"]),
];

/// A section with a random subset of its options.
fn section(
    name: &'static str,
    pool: &'static [(&'static str, &'static [&'static str])],
) -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence((0..pool.len()).collect::<Vec<_>>(), 0..=pool.len().min(6))
        .prop_flat_map(move |idx| {
            let picks: Vec<_> = idx
                .into_iter()
                .map(|i| {
                    let n = pool[i].1.len();
                    let valid = pool[i]
                        .1
                        .iter()
                        .filter(|v| !v.starts_with('!'))
                        .count()
                        .max(1);
                    (Just(i), prop_oneof![12 => 0..valid, 1 => 0..n])
                })
                .collect();
            picks
        })
        .prop_map(move |picks| {
            if picks.is_empty() {
                return Vec::new();
            }
            let mut t = vec![name.to_string(), "{".into()];
            for (i, v) in picks {
                let (opt, vals) = pool[i];
                t.push(opt.into());
                let val = vals[v].trim_start_matches('!');
                if !val.is_empty() {
                    t.push(val.into());
                }
                t.push(";".into());
            }
            t.push("}".into());
            t
        })
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

prop_compose! {
    fn resource()(
        style in 0..4usize,
        minor in prop_oneof![Just(1u32), Just(2), Just(7), Just(300)],
        bad_style in 0..40usize,
        net in section("net", NET),
        disk in section("disk", DISK),
        startup in section("startup", STARTUP),
        handlers in section("handlers", HANDLERS),
        syncer in section("syncer", SYNCER),
        proto in prop_oneof![4 => Just(None), 4 => Just(Some("B")), 1 => Just(Some("x"))],
        v6 in any::<bool>(),
        port in prop_oneof![8 => Just(7789u32), 8 => Just(7790), 1 => Just(70000)],
    ) -> Vec<String> {
        let mut t = words("resource r0 {");
        if let Some(p) = proto {
            t.extend(words(&format!("protocol {p} ;")));
        }
        let dev = match style {
            0 => format!("device /dev/drbd{minor} ;"),
            1 => format!("device minor {minor} ;"),
            2 => format!("device /dev/drbd_r0 minor {minor} ;"),
            _ if bad_style == 0 => format!("device drbd{minor} minor {} ;", minor + 1),
            _ => format!("device drbd{minor} ;"),
        };
        t.extend(words(&dev));
        t.extend(words("disk /dev/vg/r0 ; meta-disk internal ;"));
        t.extend(net);
        t.extend(disk);
        t.extend(startup);
        t.extend(handlers);
        t.extend(syncer);
        for (h, a) in [("alpha", 1), ("bravo", 2)] {
            let addr = if v6 {
                format!("address ipv6 [ fd00::{a} ] : {port} ;")
            } else {
                format!("address 10.9.0.{a} : {port} ;")
            };
            t.extend(words(&format!("on {h} {{ {addr} }}")));
        }
        t.push("}".into());
        t
    }
}

prop_compose! {
    fn config()(
        global in prop_oneof![
            Just(String::new()),
            Just("global { usage-count no ; }".to_string()),
            Just("global { minor-count 64 ; dialog-refresh 5 ; disable-ip-verification ; }".to_string()),
            Just("global { cmd-timeout-short 7 ; }".to_string()),
        ],
        common_net in section("net", NET),
        common_disk in section("disk", DISK),
        res in resource(),
        seps in proptest::collection::vec(0..6usize, 300),
        junk in prop_oneof![30 => Just(""), 1 => Just("turbo-mode yes ;"), 1 => Just("discard-my-data ;"), 1 => Just("} }")],
    ) -> String {
        let mut t = words(&global);
        if let Some(p) = res.iter().position(|w| w == "net") {
            let mut r = res.clone();
            for (k, w) in words(junk).into_iter().enumerate() {
                r.insert(p + 2 + k, w);
            }
            return finish(words(&global).into_iter().chain(r).collect(), &seps);
        }
        if !common_net.is_empty() || !common_disk.is_empty() {
            t.extend(words("common {"));
            t.extend(common_net);
            t.extend(common_disk);
            t.push("}".into());
        }
        t.extend(res);
        finish(t, &seps)
    }
}

/// Joins tokens with the chosen separators (spaces, tabs, newlines, comments).
fn finish(t: Vec<String>, seps: &[usize]) -> String {
    let mut s = String::new();
    for (i, w) in t.iter().enumerate() {
        s.push_str(w);
        s.push_str(match seps[i % seps.len()] {
            0 => " ",
            1 => "\n",
            2 => "\t",
            3 => " # a comment { ; }\n",
            4 => "\n\n  ",
            _ => "  ",
        });
    }
    s
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn check(text: &str, node: Option<&str>) -> Result<(), TestCaseError> {
    let dir = std::env::temp_dir().join(format!(
        "drbdadm-compat-prop-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("t.res"), text).unwrap();
    let args = ["-c", "t.res", "dump", "all"];
    let want = run_oracle(&dir, node, &args);
    let got = run_ours(&dir, node, &args);
    let _ = std::fs::remove_dir_all(&dir);
    if std::env::var_os("SHOW_CODES").is_some() {
        eprintln!(
            "oracle exit {} stdout {} bytes {:?}",
            want.code,
            want.stdout.len(),
            want.stderr.lines().last()
        );
    }
    if node.is_none() {
        prop_assert_eq!(&got, &want, "config:\n{}", text);
    } else {
        prop_assert_eq!(
            (&got.stdout, got.code),
            (&want.stdout, want.code),
            "config:\n{}",
            text
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_configs_dump_like_the_oracle(text in config()) {
        if oracle().is_none() { return Ok(()); }
        check(&text, None)?;
    }

    #[test]
    fn generated_configs_dump_like_the_oracle_as_a_node(text in config()) {
        if oracle().is_none() { return Ok(()); }
        let with_ipcheck_off = if text.contains("global") {
            text.clone()
        } else {
            format!("global {{ disable-ip-verification; }}\n{text}")
        };
        check(&with_ipcheck_off, Some("alpha"))?;
    }
}

/// Corpus files with their whitespace and comments rewritten.
#[test]
fn corpus_with_random_layout_dumps_like_the_oracle() {
    if oracle().is_none() {
        return;
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    for f in files("v84") {
        let text = std::fs::read_to_string(&f).unwrap();
        if text.contains("include") {
            continue;
        }
        let seps = proptest::collection::vec(0..4usize, 64);
        runner
            .run(&seps, |seps| {
                let mut out = String::new();
                for (i, line) in text.lines().enumerate() {
                    for (j, w) in line.split_whitespace().enumerate() {
                        if w.starts_with('#') {
                            break;
                        }
                        // Keep quoted strings with spaces intact by only splitting outside them.
                        out.push_str(w);
                        let k = seps[(i * 7 + j) % seps.len()];
                        out.push_str(match k {
                            0 => " ",
                            1 => "\t",
                            2 => " #c\n",
                            _ => "\n",
                        });
                    }
                }
                // Quoted strings containing spaces would be split; skip those files' variants.
                if text.contains("\" ") || text.contains(" \"") && text.matches('"').count() > 2 {
                    return Ok(());
                }
                check(&out, None)
            })
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}
