//! Fuzz the drbd.conf parser, drbdadm's post-parse checks, the effective model and `dump`:
//! any input must end in a value or an error, never a panic, in bounded time and memory.
#![no_main]

use drbdadm_compat::dump::dump_all;
use drbdadm_compat::res::parser::{ParseOptions, Parser};
use drbdadm_compat::res::resolve::resolve;
use drbdadm_compat::res::validate::{post_parse, validate_all, NodeEnv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = ParseOptions {
        file: "fuzz.res".into(),
        save: "/nonexistent/fuzz.res".into(),
        cwd: "/nonexistent".into(),
        no_tty: true,
        follow_includes: false,
    };
    let (r, mut s) = Parser::parse(data.to_vec(), &opts);
    let Ok(mut config) = r else { return };
    for node in ["alpha", "bravo"] {
        let env = NodeEnv {
            nodename: node.into(),
            ..NodeEnv::default()
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
    config.resources.clear();
});
