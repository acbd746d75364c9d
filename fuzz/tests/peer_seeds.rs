//! The peer-wire, handshake and metadata seeds and committed corpus files pass their targets'
//! checks without libFuzzer (`cargo test` in `fuzz/`), and they reach the states they are for.

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect()
}

fn all(target: &str, seeds: Vec<(&'static str, Vec<u8>)>, run: fn(&[u8])) {
    for (name, input) in seeds {
        eprintln!("seed {name}");
        run(&input);
    }
    for (name, input) in corpus(target) {
        eprintln!("{name}");
        run(&input);
    }
    let files = corpus(target);
    let bytes: usize = files.iter().map(|f| f.1.len()).sum();
    assert!(
        files.len() < 100 && bytes < 1 << 20,
        "{target}: {} files, {bytes} bytes",
        files.len()
    );
}

#[test]
fn peer_wire_seeds_pass() {
    all(
        "peer_wire",
        tandem_fuzz::peer::wire_seeds(),
        tandem_fuzz::peer::run_wire,
    );
}

#[test]
fn peer_handshake_seeds_pass() {
    all(
        "peer_handshake",
        tandem_fuzz::peer::handshake_seeds(),
        tandem_fuzz::peer::run_handshake,
    );
}

#[test]
fn metadata_loader_seeds_pass() {
    all(
        "metadata_loader",
        tandem_fuzz::metadata::seeds(),
        tandem_fuzz::metadata::run,
    );
}

/// Every packet kind decodes from its seed, so the fuzzer starts from each of them.
#[test]
fn wire_seeds_cover_every_kind() {
    use bytes::BytesMut;
    use repl_core::wire::Decoder;
    let mut names = std::collections::BTreeSet::new();
    for (_, input) in tandem_fuzz::peer::wire_seeds() {
        let mut buf = BytesMut::from(&input[1 + usize::from(input[0] & 7)..]);
        let mut dec = Decoder::new();
        while let Ok(Some(f)) = dec.decode(&mut buf) {
            names.insert(f.packet.name());
        }
    }
    assert_eq!(names.len(), 27, "{names:?}");
}

/// The honest transcripts establish the harness's link; the broken ones fail it.
#[test]
fn handshake_seeds_reach_their_ends() {
    use bytes::BytesMut;
    use repl_core::link::{Link, Progress};
    use repl_core::wire::Decoder;
    for (name, input) in tandem_fuzz::peer::handshake_seeds() {
        let (config, nonce) = tandem_fuzz::peer::handshake_config(input[0]);
        let (mut link, _) = Link::new(config, nonce).unwrap();
        let mut buf = BytesMut::from(&input[1..]);
        let mut dec = Decoder::new();
        let mut up = false;
        let mut failed = false;
        while let Ok(Some(f)) = dec.decode(&mut buf) {
            match link.receive(f.packet) {
                Ok(Progress::Established(..)) => up = true,
                Ok(Progress::Continue(_)) => {}
                Err(_) => failed |= !up,
            }
        }
        let honest = [
            "plain-c",
            "secret-c",
            "secret-a-dual-crc",
            "discard-b",
            "established-then-more",
        ];
        assert_eq!(up, honest.contains(&name), "{name}: established {up}");
        assert_eq!(failed, !honest.contains(&name), "{name}: failed {failed}");
    }
}
