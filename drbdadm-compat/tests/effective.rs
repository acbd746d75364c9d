//! The typed effective model against `drbdadm-84 -d up RES` (the options drbdadm would hand to
//! `drbdsetup attach` and `connect`), for every corpus resource on each of its nodes.

mod common;

use common::*;
use drbdadm_compat::cli::{load, Invocation};
use drbdadm_compat::res::resolve::{option_kind, resolve, Kind};
use drbdadm_compat::res::units::strtoll;
use drbdadm_compat::res::validate::NodeEnv;
use serde_json::Value;

/// `--name=value` pairs of the dry-run line whose drbdsetup verb is `verb` and first argument
/// `first`.
fn dry_run_options(out: &str, verb: &str, first: &str) -> Option<Vec<(String, String)>> {
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() > 2 && w[0].ends_with("drbdsetup-84") && w[1] == verb && w[2] == first {
            return Some(
                w.iter()
                    .filter_map(|x| x.strip_prefix("--"))
                    .map(|x| {
                        let (k, v) = x.split_once('=').unwrap_or((x, "yes"));
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
            );
        }
    }
    None
}

/// Checks that the typed value of `name` in `json` (a serialized options struct) is what the
/// string `value` (or the default, if `None`) means.
fn check_typed(json: &Value, name: &str, value: Option<&str>, ctx: &str) {
    let key = name.replace('-', "_");
    let Some(got) = json.get(&key) else { return };
    let Some((_, kind)) = option_kind(name) else {
        return;
    };
    match kind {
        Kind::Num(unit, _, _, def) => {
            let want = value.map_or(def, |v| strtoll(v, unit).unwrap());
            assert_eq!(got.as_u64(), Some(want), "{ctx}: {name}");
        }
        Kind::Bool(def) => {
            let want = value.map_or(def, |v| v == "yes");
            assert_eq!(got.as_bool(), Some(want), "{ctx}: {name}");
        }
        Kind::Enum(vals) => {
            let want = value.unwrap_or(vals[0]);
            assert_eq!(got.as_str(), Some(want), "{ctx}: {name}");
        }
        Kind::Str => {
            if name != "resync-after" {
                assert_eq!(got.as_str(), value, "{ctx}: {name}");
            }
        }
    }
}

#[test]
fn effective_options_match_dry_run_up() {
    let Some(_) = oracle() else { return };
    let mut compared = 0;
    for f in files("v84") {
        let d = f.parent().unwrap();
        let n = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut text = std::fs::read_to_string(&f).unwrap();
        for inc in files("v84/inc") {
            text.push_str(&std::fs::read_to_string(inc).unwrap());
        }
        for node in host_names(&text) {
            let env = NodeEnv {
                nodename: node.clone(),
                ..NodeEnv::default()
            };
            let inv = Invocation {
                config: Some(n.clone()),
                command: "up".into(),
                cwd: d.to_path_buf(),
                no_tty: true,
                ..Invocation::default()
            };
            let loaded = load(&inv, &env).unwrap_or_else(|o| panic!("{n}: {}", o.stderr));
            for r in loaded.config.resources.iter().filter(|r| !r.ignore) {
                let ctx = format!("{n} {} as {node}", r.name);
                let dry = run_oracle(d, Some(&node), &["-c", &n, "-d", "up", &r.name]);
                assert_eq!(dry.code, 0, "{ctx}: {}", dry.stderr);
                let e = resolve(&loaded.config, r, &node).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let conn = dry_run_options(&dry.stdout, "connect", &r.name)
                    .unwrap_or_else(|| panic!("{ctx}: no connect in {}", dry.stdout));
                assert_eq!(e.connect_options, conn, "{ctx}: connect options");
                let net = serde_json::to_value(&e.net).unwrap();
                for (name, _, _) in drbdadm_compat::res::resolve::OPTIONS
                    .iter()
                    .filter(|(s, _, _)| *s == "net")
                    .map(|(s, n, k)| (*n, s, k))
                {
                    let v = conn
                        .iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|x| x.1.as_str());
                    check_typed(&net, name, v, &ctx);
                }
                for v in &e.volumes {
                    let att = dry_run_options(&dry.stdout, "attach", &v.minor.to_string())
                        .unwrap_or_else(|| panic!("{ctx}: no attach in {}", dry.stdout));
                    assert_eq!(v.attach_options, att, "{ctx}: attach options");
                    let disk = serde_json::to_value(&v.disk_options).unwrap();
                    for (_, name, _) in drbdadm_compat::res::resolve::OPTIONS
                        .iter()
                        .filter(|(s, _, _)| *s == "disk")
                    {
                        let val = att
                            .iter()
                            .rev()
                            .find(|(k, _)| k == name)
                            .map(|x| x.1.as_str());
                        check_typed(&disk, name, val, &ctx);
                    }
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 20, "compared {compared} volumes");
}
