//! No input makes the parser, the checks, the model or `dump` panic (a quick in-process cousin
//! of the `res_parser` fuzz target).

use drbdadm_compat::dump::dump_all;
use drbdadm_compat::res::parser::{ParseOptions, Parser};
use drbdadm_compat::res::resolve::resolve;
use drbdadm_compat::res::validate::{post_parse, validate_all, NodeEnv};
use proptest::prelude::*;

fn exercise(data: &[u8]) {
    let opts = ParseOptions {
        file: "p.res".into(),
        save: "/nonexistent/p.res".into(),
        cwd: "/nonexistent".into(),
        no_tty: true,
        follow_includes: false,
    };
    let (r, mut s) = Parser::parse(data.to_vec(), &opts);
    let Ok(config) = r else { return };
    for node in ["alpha", "bravo", "x"] {
        let env = NodeEnv {
            nodename: node.into(),
            v4: vec!["10.0.0.1".parse().unwrap()],
            v6: vec![],
        };
        let mut c = config.clone();
        if post_parse(&mut c, &env, &mut s).is_err() {
            continue;
        }
        let _ = validate_all(&mut c, &mut s);
        let _ = dump_all(&c, node);
        for res in &c.resources {
            let _ = resolve(&c, res, node);
        }
    }
}

const WORDS: &[&str] = &[
    "resource",
    "r0",
    "{",
    "}",
    ";",
    "on",
    "alpha",
    "bravo",
    "device",
    "minor",
    "1",
    "/dev/drbd1",
    "drbd_x",
    "disk",
    "/dev/sda",
    "none",
    "meta-disk",
    "internal",
    "[",
    "]",
    "0",
    "address",
    "ipv6",
    "fd00::1",
    ":",
    "7789",
    "10.0.0.1",
    "floating",
    "volume",
    "net",
    "protocol",
    "C",
    "syncer",
    "rate",
    "10M",
    "after",
    "common",
    "global",
    "usage-count",
    "no",
    "yes",
    "include",
    "\"x y\"",
    "skip",
    "handlers",
    "startup",
    "become-primary-on",
    "both",
    "stacked-on-top-of",
    "proxy",
    "inside",
    "outside",
    "options",
    "plugin",
    "node-id",
    "connection",
    "host",
    "fencing",
    "after-sb-0pri",
    "discard-node-alpha",
    "resync-after",
    "r0/0",
    "_this_host",
    "#",
    "\n",
    "\"",
    "\\",
    "flexible-meta-disk",
    "allow-two-primaries",
    "memlimit",
    "ignore-on",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise(&data);
    }

    #[test]
    fn token_soup(words in proptest::collection::vec(0..WORDS.len(), 0..120)) {
        let text: Vec<&str> = words.iter().map(|&i| WORDS[i]).collect();
        exercise(text.join(" ").as_bytes());
    }
}

#[test]
fn pathological_inputs_finish() {
    exercise(&vec![b'{'; 100_000]);
    exercise(&vec![b'"'; 100_000]);
    exercise(&[b'a'; 100_000]);
    exercise(format!("skip {}", "{".repeat(50_000)).as_bytes());
    exercise(format!("resource r {{ {} }}", "on a { } ".repeat(2000)).as_bytes());
}
