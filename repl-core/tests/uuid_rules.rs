//! The handshake rules against the text fixtures in `fixtures/uuid_compare.txt`, and properties
//! of `uuid_compare` over arbitrary and over simulated UUID histories.

use std::collections::BTreeSet;

use proptest::prelude::*;
use repl_core::state::Role;
use repl_core::types::Uuid;
use repl_core::uuid::{
    uuid_compare, CompareOptions, Correction, GenerationUuids, HandshakeSide, UuidFlags, Verdict,
    FF_ALL, PRO_VERSION_MAX, UUID_NEW_BM_OFFSET,
};

const FIXTURES: &str = include_str!("fixtures/uuid_compare.txt");

/// Every rule number `drbd_uuid_compare` can report.
const RULES: [u16; 17] = [
    10, 20, 30, 34, 35, 36, 37, 40, 41, 50, 51, 60, 70, 71, 80, 90, 100,
];

struct Case {
    line: usize,
    name: String,
    me: HandshakeSide,
    peer: HandshakeSide,
    opts: CompareOptions,
    result: i32,
    rule: u16,
    correction: Option<Correction>,
    asymmetric: bool,
}

fn parse_tuple(s: &str) -> GenerationUuids {
    let v: Vec<u64> = s
        .split(':')
        .map(|x| u64::from_str_radix(x, 16).unwrap_or_else(|_| panic!("bad hex {x:?}")))
        .collect();
    assert_eq!(v.len(), 4, "tuple {s:?} needs 4 UUIDs");
    GenerationUuids {
        current: Uuid(v[0]),
        bitmap: Uuid(v[1]),
        history: [Uuid(v[2]), Uuid(v[3])],
    }
}

fn parse_side(s: &str) -> HandshakeSide {
    let end = s.find(['@', '+']).unwrap_or(s.len());
    let mut side = HandshakeSide::secondary(parse_tuple(&s[..end]));
    let mut rest = &s[end..];
    while !rest.is_empty() {
        let next = rest[1..].find(['@', '+']).map_or(rest.len(), |i| i + 1);
        match &rest[..next] {
            "@P" => side.role = Role::Primary,
            "@S" => side.role = Role::Secondary,
            "+crashed" => side.flags = side.flags | UuidFlags::CRASHED_PRIMARY,
            "+discard" => side.flags = side.flags | UuidFlags::DISCARD_MY_DATA,
            other => panic!("unknown side modifier {other:?}"),
        }
        rest = &rest[next..];
    }
    side
}

fn parse_options(s: &str) -> CompareOptions {
    let mut opts = CompareOptions::default();
    if s == "-" {
        return opts;
    }
    for opt in s.split(',') {
        match opt.split_once('=') {
            Some(("proto", v)) => opts.agreed_pro_version = v.parse().unwrap(),
            Some(("ff", v)) => opts.agreed_features = u32::from_str_radix(v, 16).unwrap(),
            None if opt == "rc" => opts.resolve_conflicts = true,
            _ => panic!("unknown option {opt:?}"),
        }
    }
    opts
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (i, raw) in FIXTURES.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (input, expect) = line
            .split_once("=>")
            .unwrap_or_else(|| panic!("line {}: no '=>'", i + 1));
        let input: Vec<&str> = input.split_whitespace().collect();
        assert_eq!(input.len(), 4, "line {}: name self peer options", i + 1);
        let expect: Vec<&str> = expect.split_whitespace().collect();
        let mut correction = None;
        let mut asymmetric = false;
        for extra in &expect[2..] {
            match extra.split_once('=') {
                Some(("fix-mine", t)) => correction = Some(Correction::Mine(parse_tuple(t))),
                Some(("fix-peer", t)) => correction = Some(Correction::Peer(parse_tuple(t))),
                None if *extra == "!asym" => asymmetric = true,
                _ => panic!("line {}: unknown expectation {extra:?}", i + 1),
            }
        }
        out.push(Case {
            line: i + 1,
            name: input[0].to_owned(),
            me: parse_side(input[1]),
            peer: parse_side(input[2]),
            opts: parse_options(input[3]),
            result: expect[0].parse().unwrap(),
            rule: expect[1].parse().unwrap(),
            correction,
            asymmetric,
        });
    }
    out
}

/// Whether `b` is what the peer must conclude when I concluded `a`.
fn mirrors(a: i32, b: i32) -> bool {
    match a {
        -2..=2 => b == -a,
        _ => b == a,
    }
}

fn flipped(opts: &CompareOptions) -> CompareOptions {
    CompareOptions {
        resolve_conflicts: !opts.resolve_conflicts,
        ..*opts
    }
}

#[test]
fn fixtures_match_drbd_rules() {
    let cases = cases();
    let mut failures = Vec::new();
    let mut rules_seen = BTreeSet::new();
    for c in &cases {
        let v = uuid_compare(&c.me, &c.peer, &c.opts);
        rules_seen.insert(v.rule);
        let want = Verdict {
            result: c.result,
            rule: c.rule,
            correction: c.correction,
        };
        if v != want {
            failures.push(format!(
                "line {} {}: got {v} {:?}, want {want} {:?}",
                c.line, c.name, v.correction, want.correction
            ));
        }
        let m = uuid_compare(&c.peer, &c.me, &flipped(&c.opts));
        if mirrors(v.result, m.result) == c.asymmetric {
            failures.push(format!(
                "line {} {}: mirror gave {m} against {v}{}",
                c.line,
                c.name,
                if c.asymmetric {
                    " but the case is marked !asym"
                } else {
                    ""
                }
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let missing: Vec<u16> = RULES
        .iter()
        .copied()
        .filter(|r| !rules_seen.contains(r))
        .collect();
    assert!(missing.is_empty(), "rules without a fixture: {missing:?}");
    assert!(cases.len() >= 60, "only {} cases", cases.len());
}

#[test]
fn fixture_names_are_unique() {
    let mut names = BTreeSet::new();
    for c in cases() {
        assert!(names.insert(c.name.clone()), "duplicate case {}", c.name);
    }
}

#[test]
fn log_line_reads_like_drbd() {
    let me = HandshakeSide::secondary(GenerationUuids::JUST_CREATED);
    let mut peer = me;
    peer.uuids.current = Uuid(0xA0);
    let v = uuid_compare(&me, &peer, &CompareOptions::default());
    assert_eq!(v.to_string(), "uuid_compare()=-2 by rule 20");
}

/// Results each rule may give, from `drbd_uuid_compare`.
fn allowed(rule: u16, result: i32) -> bool {
    let wsame_abort = -((0x10000 | PRO_VERSION_MAX | (4 << 8)) as i32);
    match rule {
        10 => result == 0,
        20 => result == -2,
        30 => result == 2 || result == -1091,
        34 | 36 | 70 => result == 1,
        35 | 37 | 50 => result == -1,
        40 => (-1..=1).contains(&result),
        41 => [1, -1, -100, wsame_abort].contains(&result),
        51 => result == -1 || result == -1091,
        60 => result == -2,
        71 => result == 1 || result == -1091,
        80 => result == 2,
        90 => result == 100,
        100 => result == -100 || result == -1000,
        _ => false,
    }
}

/// UUID values drawn from a small pool so that rules actually match.
fn pool_uuid() -> impl Strategy<Value = Uuid> {
    prop_oneof![
        Just(0u64),
        Just(4),
        Just(5),
        Just(0xA0),
        Just(0xA1),
        Just(0xB0),
        Just(0xB1),
        Just(0xC0),
        Just(0xB0 + UUID_NEW_BM_OFFSET),
        Just(0xA0 + UUID_NEW_BM_OFFSET),
    ]
    .prop_map(Uuid)
}

fn pool_tuple() -> impl Strategy<Value = GenerationUuids> {
    (pool_uuid(), pool_uuid(), pool_uuid(), pool_uuid()).prop_map(|(c, b, h0, h1)| {
        GenerationUuids {
            current: c,
            bitmap: b,
            history: [h0, h1],
        }
    })
}

fn side(tuple: impl Strategy<Value = GenerationUuids>) -> impl Strategy<Value = HandshakeSide> {
    (tuple, any::<bool>(), 0u64..16).prop_map(|(uuids, primary, flags)| HandshakeSide {
        uuids,
        role: if primary {
            Role::Primary
        } else {
            Role::Secondary
        },
        flags: UuidFlags(flags),
    })
}

fn options() -> impl Strategy<Value = CompareOptions> {
    (
        prop_oneof![
            Just(86u32),
            Just(90),
            Just(91),
            Just(95),
            Just(96),
            Just(101)
        ],
        prop_oneof![Just(0u32), Just(3), Just(FF_ALL)],
        any::<bool>(),
    )
        .prop_map(|(p, f, rc)| CompareOptions {
            agreed_pro_version: p,
            agreed_features: f,
            resolve_conflicts: rc,
        })
}

/// A deterministic stream of "random" UUIDs for the simulated cluster.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    LostSyncUuid,
    DropMidResync,
    SourceMissesFinish,
    TargetMissesFinish,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// The node runs as a disconnected Primary and writes; `primary_at_split` makes it Primary
    /// before the link goes, so its bitmap UUID carries the role bit.
    Write {
        node: usize,
        primary_at_split: bool,
    },
    Connect(Fault),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..2, any::<bool>()).prop_map(|(node, primary_at_split)| Op::Write {
            node,
            primary_at_split
        }),
        prop_oneof![
            4 => Just(Fault::None),
            1 => Just(Fault::LostSyncUuid),
            1 => Just(Fault::DropMidResync),
            1 => Just(Fault::SourceMissesFinish),
            1 => Just(Fault::TargetMissesFinish),
        ]
        .prop_map(Op::Connect),
    ]
}

fn masked(u: &GenerationUuids) -> [u64; 4] {
    [
        u.current.masked(),
        u.bitmap.masked(),
        u.history[0].masked(),
        u.history[1].masked(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any input yields one of the (rule, result) pairs DRBD can produce; only rules 34, 35, 51
    /// and 71 rewrite a tuple.
    #[test]
    fn every_input_lands_on_a_known_rule(me in side(pool_tuple()), peer in side(pool_tuple()), opts in options()) {
        let v = uuid_compare(&me, &peer, &opts);
        prop_assert!(allowed(v.rule, v.result), "{v}");
        let corrects = matches!((v.rule, v.result), (34 | 35, _) | (51, -1) | (71, 1));
        prop_assert_eq!(v.correction.is_some(), corrects, "{}", v);
        prop_assert_eq!(v.to_string(), format!("uuid_compare()={} by rule {}", v.result, v.rule));
    }

    /// With protocol 96 or later a corrected tuple compares again without another correction,
    /// and an undone sync-UUID start keeps its direction.
    #[test]
    fn corrections_settle(me in side(pool_tuple()), peer in side(pool_tuple()), opts in options()) {
        let opts = CompareOptions { agreed_pro_version: opts.agreed_pro_version.max(96), ..opts };
        let v = uuid_compare(&me, &peer, &opts);
        let (mut me2, mut peer2) = (me, peer);
        match v.correction {
            None => return Ok(()),
            Some(Correction::Mine(t)) => me2.uuids = t,
            Some(Correction::Peer(t)) => peer2.uuids = t,
        }
        let again = uuid_compare(&me2, &peer2, &opts);
        prop_assert_eq!(again.correction, None, "{} then {}", v, again);
        if matches!(v.rule, 51 | 71) {
            prop_assert_eq!(again.result, v.result, "{} then {}", v, again);
        }
    }

    /// Equal currents: the crashed-primary arbitration gives mirrored answers on both nodes,
    /// with the resolve-conflicts flag held by exactly one of them.
    #[test]
    fn crash_arbitration_is_antisymmetric(
        current in pool_uuid().prop_filter("not fresh", |u| u.masked() != 0 && u.masked() != 4),
        a in side(pool_tuple()),
        b in side(pool_tuple()),
        opts in options(),
    ) {
        let (mut a, mut b) = (a, b);
        a.uuids.current = current;
        b.uuids.current = Uuid(current.0 ^ 1);
        let va = uuid_compare(&a, &b, &opts);
        let vb = uuid_compare(&b, &a, &flipped(&opts));
        prop_assert!(mirrors(va.result, vb.result), "{} vs {}", va, vb);
    }

    /// Histories grown by DRBD's own UUID operations (writes while apart, resyncs that are
    /// interrupted at every step) always get mirrored verdicts; the two nodes' corrections
    /// agree; a completed resync leaves equal tuples.
    #[test]
    fn simulated_histories_get_mirrored_verdicts(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..40)) {
        let mut rng = SplitMix(seed);
        let mut nodes = [GenerationUuids::JUST_CREATED; 2];
        let opts = CompareOptions::default();
        for op in ops {
            match op {
                Op::Write { node, primary_at_split } => {
                    let n = &mut nodes[node];
                    if primary_at_split {
                        n.set_role(Role::Primary);
                    }
                    if n.bitmap.0 == 0 {
                        n.new_current(rng.next(), Role::Primary);
                    }
                    n.set_role(Role::Secondary);
                }
                Op::Connect(fault) => {
                    let a = HandshakeSide::secondary(nodes[0]);
                    let b = HandshakeSide::secondary(nodes[1]);
                    let va = uuid_compare(&a, &b, &opts);
                    let vb = uuid_compare(&b, &a, &flipped(&opts));
                    prop_assert!(mirrors(va.result, vb.result), "{} vs {}: {:?} {:?}", va, vb, nodes[0], nodes[1]);
                    for (me, v, other) in [(0, va, vb), (1, vb, va)] {
                        match v.correction {
                            Some(Correction::Mine(t)) => {
                                prop_assert_eq!(other.correction, Some(Correction::Peer(t)));
                                nodes[me] = t;
                            }
                            Some(Correction::Peer(t)) => {
                                prop_assert_eq!(other.correction, Some(Correction::Mine(t)));
                            }
                            None => {}
                        }
                    }
                    let (src, tgt) = match va.result {
                        0 => {
                            prop_assert_eq!(nodes[0].current.masked(), nodes[1].current.masked());
                            continue;
                        }
                        // Split brain: after-sb or the operator discards node 1.
                        1 | 2 | 100 | -100 => (0, 1),
                        -1 | -2 => (1, 0),
                        _ => return Ok(()),
                    };
                    let handshake_copy = nodes[src];
                    let s = nodes[src].start_resync_as_source(rng.next());
                    if let Fault::LostSyncUuid = fault {
                        continue;
                    }
                    nodes[tgt].receive_sync_uuid(s, Role::Secondary);
                    match fault {
                        Fault::DropMidResync => {}
                        Fault::SourceMissesFinish => {
                            nodes[tgt].finish_resync_as_target(&handshake_copy, Role::Secondary)
                        }
                        Fault::TargetMissesFinish => nodes[src].finish_resync_as_source(),
                        _ => {
                            nodes[src].finish_resync_as_source();
                            nodes[tgt].finish_resync_as_target(&handshake_copy, Role::Secondary);
                            prop_assert_eq!(masked(&nodes[0]), masked(&nodes[1]));
                        }
                    }
                }
            }
        }
    }
}
