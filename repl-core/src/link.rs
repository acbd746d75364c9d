//! The connection-level start of a peer link, run the same way on both sides once TCP is up:
//! versions and identities (`P_CONNECTION_FEATURES`), `cram-hmac-alg` authentication
//! (`P_AUTH_CHALLENGE` / `P_AUTH_RESPONSE`) and the `P_PROTOCOL` agreement.
//!
//! Sans-IO like the engine: [`Link::new`] returns the packets to send first, [`Link::receive`]
//! takes each packet from the peer and returns what to send next, until [`Progress::Established`]
//! hands over to the engine. Failures are sticky and name what disagreed, in DRBD's words where
//! DRBD has them. The auth nonce comes from the caller (this crate has no randomness source).
//!
//! An auth response is the HMAC, keyed with the shared secret, of the challenge's length byte,
//! the challenge and the responder's node name; naming the responder means a response obtained
//! from us on one connection can never pass for the peer's on another.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{IntegrityAlg, Packet, Protocol, MAX_NAME_BYTES, MAX_VERSION, MIN_VERSION};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the challenge nonce each side sends.
pub const NONCE_BYTES: usize = 32;

/// The `cram-hmac-alg` values tandem supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HmacAlg {
    Sha256,
}

impl HmacAlg {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            HmacAlg::Sha256 => "sha256",
        }
    }
}

impl fmt::Display for HmacAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for HmacAlg {
    type Err = LinkConfigError;

    /// Accepts `sha256` (any case, optionally as the kernel's `hmac(sha256)`).
    fn from_str(s: &str) -> Result<HmacAlg, LinkConfigError> {
        let lower = s.to_ascii_lowercase();
        let inner = lower
            .strip_prefix("hmac(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or(&lower);
        match inner {
            "sha256" => Ok(HmacAlg::Sha256),
            _ => Err(LinkConfigError::UnsupportedHmacAlg(s.to_owned())),
        }
    }
}

/// What one side of a link is configured with (`net` section and the `on` names).
#[derive(Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub resource: String,
    pub my_node: String,
    /// The name the peer must present.
    pub peer_node: String,
    pub protocol: Protocol,
    /// `allow-two-primaries`.
    pub two_primaries: bool,
    /// `data-integrity-alg`.
    pub integrity: Option<IntegrityAlg>,
    /// `connect --discard-my-data`.
    pub discard_my_data: bool,
    /// `cram-hmac-alg` and `shared-secret`; `None` skips authentication.
    pub secret: Option<(HmacAlg, Vec<u8>)>,
}

impl fmt::Debug for LinkConfig {
    /// Like the derived form, with the secret left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("resource", &self.resource)
            .field("my_node", &self.my_node)
            .field("peer_node", &self.peer_node)
            .field("protocol", &self.protocol)
            .field("two_primaries", &self.two_primaries)
            .field("integrity", &self.integrity)
            .field("discard_my_data", &self.discard_my_data)
            .field("secret", &self.secret.as_ref().map(|(alg, _)| (alg, "…")))
            .finish()
    }
}

/// What the link agreed on and learned about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The agreed wire protocol version.
    pub version: u32,
    pub node: String,
    pub protocol: Protocol,
    pub two_primaries: bool,
    pub integrity: Option<IntegrityAlg>,
    /// The peer was connected with `--discard-my-data`.
    pub peer_discard_my_data: bool,
    /// This node breaks ties (the engine's `resolve_conflicts`): the side whose node name
    /// sorts last, so exactly one side of a link sets it.
    pub resolve_conflicts: bool,
}

/// A configuration [`Link::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkConfigError {
    #[error("cram-hmac-alg '{0}' is not supported; tandem supports sha256")]
    UnsupportedHmacAlg(String),
    #[error("{field} name of {len} bytes, expected 1 to {MAX_NAME_BYTES}")]
    BadName { field: &'static str, len: usize },
    #[error("this node and its peer are both named '{0}'")]
    SameNode(String),
    #[error("shared-secret is empty")]
    EmptySecret,
}

/// Why a link's handshake failed; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("incompatible protocol versions: we speak {our_min}..{our_max}, peer {peer_min}..{peer_max}")]
    Versions {
        our_min: u32,
        our_max: u32,
        peer_min: u32,
        peer_max: u32,
    },
    #[error("Peer presented wrong resource name '{peer}' (ours is '{ours}')")]
    WrongResource { ours: String, peer: String },
    #[error("peer presented node name '{peer}', but this resource's peer is '{expected}'")]
    WrongPeer { expected: String, peer: String },
    #[error("peer did not authenticate (shared-secret set here but not on the peer?)")]
    PeerDidNotAuthenticate,
    #[error("peer asks for authentication but no shared-secret is configured")]
    NoSecretHere,
    #[error("Peer presented the same challenge! (our own nonce reflected back)")]
    ReflectedChallenge,
    #[error("Authentication of peer failed")]
    AuthFailed,
    #[error("incompatible {setting} settings (here {ours}, peer {peer})")]
    Incompatible {
        setting: &'static str,
        ours: String,
        peer: String,
    },
    #[error("peer disconnected while {phase}")]
    PeerDisconnected { phase: &'static str },
    #[error("unexpected {packet} while {phase}")]
    Unexpected {
        packet: &'static str,
        phase: &'static str,
    },
}

/// The result of one [`Link::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Send these packets and keep feeding the peer's.
    Continue(Vec<Packet>),
    /// The link is up: send these packets, then hand the connection to the engine.
    Established(PeerInfo, Vec<Packet>),
}

/// Where the handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    AwaitChallenge,
    AwaitResponse,
    AwaitProtocol,
    Established(PeerInfo),
    Failed(LinkError),
}

impl Phase {
    fn describe(&self) -> &'static str {
        match self {
            Phase::AwaitHello => "waiting for the peer's P_CONNECTION_FEATURES",
            Phase::AwaitChallenge => "waiting for the peer's P_AUTH_CHALLENGE",
            Phase::AwaitResponse => "waiting for the peer's P_AUTH_RESPONSE",
            Phase::AwaitProtocol => "waiting for the peer's P_PROTOCOL",
            Phase::Established(_) => "established (later packets belong to the engine)",
            Phase::Failed(_) => "failed",
        }
    }
}

/// One side of a link's handshake.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    nonce: [u8; NONCE_BYTES],
    /// The shared secret as a ready HMAC key.
    key: Option<HmacSha256>,
    /// Agreed version, set on the peer's hello.
    version: u32,
    phase: Phase,
}

impl Link {
    /// Starts a handshake; send the returned packets first. `nonce` must be fresh random
    /// bytes for every connection (it is only used with a shared secret).
    ///
    /// # Errors
    /// Empty or over-long names, the same name on both ends, an empty secret.
    pub fn new(
        config: LinkConfig,
        nonce: [u8; NONCE_BYTES],
    ) -> Result<(Link, Vec<Packet>), LinkConfigError> {
        for (field, name) in [
            ("resource", &config.resource),
            ("node", &config.my_node),
            ("peer node", &config.peer_node),
        ] {
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(LinkConfigError::BadName {
                    field,
                    len: name.len(),
                });
            }
        }
        if config.my_node == config.peer_node {
            return Err(LinkConfigError::SameNode(config.my_node.clone()));
        }
        let key = match &config.secret {
            None => None,
            Some((_, secret)) if secret.is_empty() => return Err(LinkConfigError::EmptySecret),
            Some((HmacAlg::Sha256, secret)) => Some(
                // HMAC takes keys of any length; the error branch is unreachable.
                HmacSha256::new_from_slice(secret).map_err(|_| LinkConfigError::EmptySecret)?,
            ),
        };
        let hello = Packet::Hello {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            resource: config.resource.clone(),
            node: config.my_node.clone(),
        };
        let link = Link {
            config,
            nonce,
            key,
            version: 0,
            phase: Phase::AwaitHello,
        };
        Ok((link, vec![hello]))
    }

    /// The peer, once established.
    pub fn peer(&self) -> Option<&PeerInfo> {
        match &self.phase {
            Phase::Established(info) => Some(info),
            _ => None,
        }
    }

    /// The error that ended the handshake, if it failed.
    pub fn error(&self) -> Option<&LinkError> {
        match &self.phase {
            Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Feeds one packet from the peer; send what the result holds.
    ///
    /// # Errors
    /// Any disagreement or out-of-order packet; the link stays failed and returns the same
    /// error for every later packet. After establishment every packet is `Unexpected`
    /// (without failing the link): they are the engine's.
    pub fn receive(&mut self, packet: Packet) -> Result<Progress, LinkError> {
        match &self.phase {
            Phase::Failed(e) => return Err(e.clone()),
            Phase::Established(_) => return Err(self.unexpected(&packet)),
            _ => {}
        }
        let r = self.step(packet);
        if let Err(e) = &r {
            self.phase = Phase::Failed(e.clone());
        }
        r
    }

    fn unexpected(&self, packet: &Packet) -> LinkError {
        if matches!(packet, Packet::Disconnect) && !matches!(self.phase, Phase::Established(_)) {
            return LinkError::PeerDisconnected {
                phase: self.phase.describe(),
            };
        }
        LinkError::Unexpected {
            packet: packet.name(),
            phase: self.phase.describe(),
        }
    }

    fn step(&mut self, packet: Packet) -> Result<Progress, LinkError> {
        match (&self.phase, packet) {
            (
                Phase::AwaitHello,
                Packet::Hello {
                    min_version,
                    max_version,
                    resource,
                    node,
                },
            ) => {
                self.on_hello(min_version, max_version, resource, node)?;
                if self.key.is_some() {
                    self.phase = Phase::AwaitChallenge;
                    let nonce = Bytes::copy_from_slice(&self.nonce);
                    Ok(Progress::Continue(vec![Packet::AuthChallenge { nonce }]))
                } else {
                    self.phase = Phase::AwaitProtocol;
                    Ok(Progress::Continue(vec![self.protocol_packet()]))
                }
            }
            (Phase::AwaitChallenge, Packet::AuthChallenge { nonce }) => {
                if nonce.as_ref() == self.nonce {
                    return Err(LinkError::ReflectedChallenge);
                }
                let mac = self.mac(&nonce, &self.config.my_node);
                self.phase = Phase::AwaitResponse;
                Ok(Progress::Continue(vec![Packet::AuthResponse { mac }]))
            }
            (Phase::AwaitChallenge, Packet::Protocol { .. }) => {
                Err(LinkError::PeerDidNotAuthenticate)
            }
            (Phase::AwaitResponse, Packet::AuthResponse { mac }) => {
                let Some(key) = &self.key else {
                    return Err(LinkError::AuthFailed);
                };
                let mut expected = key.clone();
                feed_mac_input(&mut expected, &self.nonce, &self.config.peer_node);
                // Constant-time comparison.
                if expected.verify_slice(&mac).is_err() {
                    return Err(LinkError::AuthFailed);
                }
                self.phase = Phase::AwaitProtocol;
                Ok(Progress::Continue(vec![self.protocol_packet()]))
            }
            (Phase::AwaitProtocol, Packet::AuthChallenge { .. }) if self.key.is_none() => {
                Err(LinkError::NoSecretHere)
            }
            (
                Phase::AwaitProtocol,
                Packet::Protocol {
                    protocol,
                    two_primaries,
                    integrity,
                    discard_my_data,
                },
            ) => {
                let info = self.on_protocol(protocol, two_primaries, integrity, discard_my_data)?;
                self.phase = Phase::Established(info.clone());
                Ok(Progress::Established(info, Vec::new()))
            }
            (_, other) => Err(self.unexpected(&other)),
        }
    }

    /// Version overlap, resource and peer name (`drbd_do_features` and the names check).
    fn on_hello(
        &mut self,
        min_version: u32,
        max_version: u32,
        resource: String,
        node: String,
    ) -> Result<(), LinkError> {
        if min_version > MAX_VERSION || max_version < MIN_VERSION {
            return Err(LinkError::Versions {
                our_min: MIN_VERSION,
                our_max: MAX_VERSION,
                peer_min: min_version,
                peer_max: max_version,
            });
        }
        if resource != self.config.resource {
            return Err(LinkError::WrongResource {
                ours: self.config.resource.clone(),
                peer: resource,
            });
        }
        if node != self.config.peer_node {
            return Err(LinkError::WrongPeer {
                expected: self.config.peer_node.clone(),
                peer: node,
            });
        }
        self.version = MAX_VERSION.min(max_version);
        Ok(())
    }

    /// The checks of DRBD's `receive_protocol`, in its order.
    fn on_protocol(
        &self,
        protocol: Protocol,
        two_primaries: bool,
        integrity: Option<IntegrityAlg>,
        discard_my_data: bool,
    ) -> Result<PeerInfo, LinkError> {
        let c = &self.config;
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let alg = |a: Option<IntegrityAlg>| match a {
            None => "none".to_owned(),
            Some(IntegrityAlg::Crc32c) => "crc32c".to_owned(),
        };
        let incompatible = |setting, ours, peer| {
            Err(LinkError::Incompatible {
                setting,
                ours,
                peer,
            })
        };
        if protocol != c.protocol {
            return incompatible(
                "protocol",
                format!("{:?}", c.protocol),
                format!("{protocol:?}"),
            );
        }
        if discard_my_data && c.discard_my_data {
            return incompatible("discard-my-data", yes_no(true), yes_no(true));
        }
        if two_primaries != c.two_primaries {
            return incompatible(
                "allow-two-primaries",
                yes_no(c.two_primaries),
                yes_no(two_primaries),
            );
        }
        if integrity != c.integrity {
            return incompatible("data-integrity-alg", alg(c.integrity), alg(integrity));
        }
        Ok(PeerInfo {
            version: self.version,
            node: c.peer_node.clone(),
            protocol,
            two_primaries,
            integrity,
            peer_discard_my_data: discard_my_data,
            resolve_conflicts: c.my_node > c.peer_node,
        })
    }

    fn protocol_packet(&self) -> Packet {
        Packet::Protocol {
            protocol: self.config.protocol,
            two_primaries: self.config.two_primaries,
            integrity: self.config.integrity,
            discard_my_data: self.config.discard_my_data,
        }
    }

    /// Our answer to a challenge; empty (and so refused by the peer) without a key.
    fn mac(&self, challenge: &[u8], responder: &str) -> Bytes {
        let Some(key) = &self.key else {
            return Bytes::new();
        };
        let mut m = key.clone();
        feed_mac_input(&mut m, challenge, responder);
        Bytes::copy_from_slice(&m.finalize().into_bytes())
    }
}

/// The MAC input: challenge length (one byte; challenges are at most 64), challenge, responder.
fn feed_mac_input(m: &mut HmacSha256, challenge: &[u8], responder: &str) {
    m.update(&[u8::try_from(challenge.len()).unwrap_or(u8::MAX)]);
    m.update(challenge);
    m.update(responder.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(me: &str, peer: &str) -> LinkConfig {
        LinkConfig {
            resource: "r0".into(),
            my_node: me.into(),
            peer_node: peer.into(),
            protocol: Protocol::C,
            two_primaries: false,
            integrity: None,
            discard_my_data: false,
            secret: None,
        }
    }

    fn secret(s: &str) -> Option<(HmacAlg, Vec<u8>)> {
        Some((HmacAlg::Sha256, s.as_bytes().to_vec()))
    }

    /// What one side ended with.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum End {
        Up(PeerInfo),
        Failed(LinkError),
        /// Still waiting when the other side stopped talking (it failed).
        Waiting,
    }

    /// Runs two links against each other over in-order queues; each packet goes through the
    /// codec on the way. A side that fails sends nothing more, but what it sent before still
    /// arrives.
    fn run(a: LinkConfig, b: LinkConfig) -> (End, End) {
        run_nonces(a, b, [1; NONCE_BYTES], [2; NONCE_BYTES])
    }

    fn run_nonces(
        a: LinkConfig,
        b: LinkConfig,
        na: [u8; NONCE_BYTES],
        nb: [u8; NONCE_BYTES],
    ) -> (End, End) {
        let (la, out_a) = Link::new(a, na).unwrap();
        let (lb, out_b) = Link::new(b, nb).unwrap();
        let mut links = [la, lb];
        let mut queues = [out_a, out_b]; // queues[i]: sent by i, not yet received
        let mut ends = [End::Waiting, End::Waiting];
        for _ in 0..20 {
            let mut moved = false;
            for from in 0..2 {
                let to = 1 - from;
                if matches!(ends[to], End::Failed(_)) {
                    continue;
                }
                for p in std::mem::take(&mut queues[from]) {
                    moved = true;
                    let p = through_codec(p);
                    match links[to].receive(p) {
                        Ok(Progress::Continue(out)) => queues[to].extend(out),
                        Ok(Progress::Established(info, out)) => {
                            queues[to].extend(out);
                            ends[to] = End::Up(info);
                        }
                        Err(e) => {
                            ends[to] = End::Failed(e);
                            break;
                        }
                    }
                }
            }
            if !moved {
                break;
            }
        }
        let [a, b] = ends;
        (a, b)
    }

    fn through_codec(p: Packet) -> Packet {
        let frame = crate::wire::Frame::connection(p);
        let mut buf = bytes::BytesMut::from(&crate::wire::encode_to_vec(&frame)[..]);
        let f = crate::wire::Decoder::new()
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(f, frame);
        f.packet
    }

    fn failed(e: &End) -> String {
        match e {
            End::Failed(e) => e.to_string(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn every_combination_establishes() {
        for protocol in [Protocol::A, Protocol::B, Protocol::C] {
            for two_primaries in [false, true] {
                for integrity in [None, Some(IntegrityAlg::Crc32c)] {
                    for sec in [None, secret("s3cret")] {
                        for (da, db) in [(false, false), (true, false), (false, true)] {
                            let mk = |me, peer, discard_my_data| LinkConfig {
                                protocol,
                                two_primaries,
                                integrity,
                                secret: sec.clone(),
                                discard_my_data,
                                ..config(me, peer)
                            };
                            let (ea, eb) = run(mk("alpha", "bravo", da), mk("bravo", "alpha", db));
                            let (End::Up(pa), End::Up(pb)) = (&ea, &eb) else {
                                panic!("{ea:?} {eb:?}");
                            };
                            assert_eq!(pa.node, "bravo");
                            assert_eq!(pb.node, "alpha");
                            assert_eq!(pa.version, MAX_VERSION);
                            assert_eq!(
                                (pa.protocol, pa.two_primaries, pa.integrity),
                                (protocol, two_primaries, integrity)
                            );
                            assert_eq!(
                                (pa.peer_discard_my_data, pb.peer_discard_my_data),
                                (db, da)
                            );
                            assert!(!pa.resolve_conflicts && pb.resolve_conflicts);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn setting_mismatches_fail_on_both_sides() {
        let a = config("alpha", "bravo");
        let b = config("bravo", "alpha");
        let cases: [(LinkConfig, LinkConfig, &str, &str); 4] = [
            (
                LinkConfig {
                    protocol: Protocol::A,
                    ..a.clone()
                },
                b.clone(),
                "incompatible protocol settings (here A, peer C)",
                "incompatible protocol settings (here C, peer A)",
            ),
            (
                LinkConfig {
                    two_primaries: true,
                    ..a.clone()
                },
                b.clone(),
                "incompatible allow-two-primaries settings (here yes, peer no)",
                "incompatible allow-two-primaries settings (here no, peer yes)",
            ),
            (
                a.clone(),
                LinkConfig {
                    integrity: Some(IntegrityAlg::Crc32c),
                    ..b.clone()
                },
                "incompatible data-integrity-alg settings (here none, peer crc32c)",
                "incompatible data-integrity-alg settings (here crc32c, peer none)",
            ),
            (
                LinkConfig {
                    discard_my_data: true,
                    ..a.clone()
                },
                LinkConfig {
                    discard_my_data: true,
                    ..b.clone()
                },
                "incompatible discard-my-data settings (here yes, peer yes)",
                "incompatible discard-my-data settings (here yes, peer yes)",
            ),
        ];
        for (ca, cb, ma, mb) in cases {
            let (ea, eb) = run(ca, cb);
            assert_eq!(failed(&ea), ma);
            assert_eq!(failed(&eb), mb);
        }
        let (ea, eb) = run(
            LinkConfig {
                resource: "r1".into(),
                ..a.clone()
            },
            b.clone(),
        );
        assert_eq!(
            failed(&ea),
            "Peer presented wrong resource name 'r0' (ours is 'r1')"
        );
        assert_eq!(
            failed(&eb),
            "Peer presented wrong resource name 'r1' (ours is 'r0')"
        );
        // A wrong peer name is seen by the side that expected another peer; the other side
        // sees the connection close.
        let (ea, eb) = run(config("alpha", "charlie"), b.clone());
        assert_eq!(
            failed(&ea),
            "peer presented node name 'bravo', but this resource's peer is 'charlie'"
        );
        assert_eq!(eb, End::Waiting);
    }

    #[test]
    fn authentication_failures() {
        let a = config("alpha", "bravo");
        let b = config("bravo", "alpha");
        let with = |c: &LinkConfig, s| LinkConfig {
            secret: secret(s),
            ..c.clone()
        };
        let (ea, eb) = run(with(&a, "one"), with(&b, "two"));
        assert_eq!(failed(&ea), "Authentication of peer failed");
        assert_eq!(failed(&eb), "Authentication of peer failed");
        let (ea, eb) = run(with(&a, "one"), b.clone());
        assert_eq!(
            failed(&ea),
            "peer did not authenticate (shared-secret set here but not on the peer?)"
        );
        assert_eq!(
            failed(&eb),
            "peer asks for authentication but no shared-secret is configured"
        );
        let (ea, eb) = run(a.clone(), with(&b, "two"));
        assert_eq!(
            failed(&ea),
            "peer asks for authentication but no shared-secret is configured"
        );
        assert_eq!(
            failed(&eb),
            "peer did not authenticate (shared-secret set here but not on the peer?)"
        );
        // The same nonce on both sides looks like a reflection to both.
        let (ea, eb) = run_nonces(with(&a, "s"), with(&b, "s"), [7; 32], [7; 32]);
        assert_eq!(
            failed(&ea),
            "Peer presented the same challenge! (our own nonce reflected back)"
        );
        assert_eq!(failed(&eb), failed(&ea));
    }

    /// An attacker without the secret echoes our challenge, or replays our own answer.
    #[test]
    fn reflection_and_replay_are_refused() {
        let a = LinkConfig {
            secret: secret("s"),
            ..config("alpha", "bravo")
        };
        let hello = Packet::Hello {
            min_version: 1,
            max_version: 1,
            resource: "r0".into(),
            node: "bravo".into(),
        };
        let (mut l, _) = Link::new(a.clone(), [9; 32]).unwrap();
        let Ok(Progress::Continue(out)) = l.receive(hello.clone()) else {
            panic!()
        };
        let Packet::AuthChallenge { nonce } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            l.receive(Packet::AuthChallenge {
                nonce: nonce.clone()
            }),
            Err(LinkError::ReflectedChallenge)
        );
        // Second connection: the attacker relays our challenge from connection 1 to us on
        // connection 2 and feeds our answer back on connection 1.
        let (mut l1, _) = Link::new(a.clone(), [1; 32]).unwrap();
        let (mut l2, _) = Link::new(a, [2; 32]).unwrap();
        let _ = l1.receive(hello.clone()).unwrap();
        let _ = l2.receive(hello).unwrap();
        let Ok(Progress::Continue(out)) = l2.receive(Packet::AuthChallenge {
            nonce: Bytes::copy_from_slice(&[1; 32]),
        }) else {
            panic!()
        };
        let _ = l1
            .receive(Packet::AuthChallenge {
                nonce: Bytes::copy_from_slice(&[3; 32]),
            })
            .unwrap();
        assert_eq!(out.len(), 1);
        let answer = out.into_iter().next().unwrap();
        assert_eq!(l1.receive(answer), Err(LinkError::AuthFailed));
    }

    #[test]
    fn version_and_order_errors() {
        let (mut l, out) = Link::new(config("alpha", "bravo"), [0; 32]).unwrap();
        assert!(matches!(&out[..], [Packet::Hello { .. }]));
        let e = l
            .receive(Packet::Hello {
                min_version: 5,
                max_version: 7,
                resource: "r0".into(),
                node: "bravo".into(),
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "incompatible protocol versions: we speak 1..2, peer 5..7"
        );
        // Sticky.
        assert_eq!(l.receive(Packet::Ping), Err(e.clone()));
        assert_eq!(l.error(), Some(&e));

        let (mut l, _) = Link::new(config("alpha", "bravo"), [0; 32]).unwrap();
        assert_eq!(
            l.receive(Packet::Protocol {
                protocol: Protocol::C,
                two_primaries: false,
                integrity: None,
                discard_my_data: false
            })
            .unwrap_err()
            .to_string(),
            "unexpected P_PROTOCOL while waiting for the peer's P_CONNECTION_FEATURES"
        );
        let (mut l, _) = Link::new(config("alpha", "bravo"), [0; 32]).unwrap();
        assert_eq!(
            l.receive(Packet::Disconnect).unwrap_err().to_string(),
            "peer disconnected while waiting for the peer's P_CONNECTION_FEATURES"
        );
        let hello = Packet::Hello {
            min_version: 1,
            max_version: 9,
            resource: "r0".into(),
            node: "bravo".into(),
        };
        let (mut l, _) = Link::new(config("alpha", "bravo"), [0; 32]).unwrap();
        let _ = l.receive(hello.clone()).unwrap();
        assert_eq!(
            l.receive(hello.clone()).unwrap_err().to_string(),
            "unexpected P_CONNECTION_FEATURES while waiting for the peer's P_PROTOCOL"
        );
        let (mut l, _) = Link::new(
            LinkConfig {
                secret: secret("s"),
                ..config("alpha", "bravo")
            },
            [0; 32],
        )
        .unwrap();
        let _ = l.receive(hello.clone()).unwrap();
        assert_eq!(
            l.receive(Packet::AuthResponse { mac: Bytes::new() })
                .unwrap_err()
                .to_string(),
            "unexpected P_AUTH_RESPONSE while waiting for the peer's P_AUTH_CHALLENGE"
        );
        // Established: later packets are refused without failing the link.
        let (mut l, _) = Link::new(config("alpha", "bravo"), [0; 32]).unwrap();
        let _ = l.receive(hello).unwrap();
        let Ok(Progress::Established(info, out)) = l.receive(Packet::Protocol {
            protocol: Protocol::C,
            two_primaries: false,
            integrity: None,
            discard_my_data: false,
        }) else {
            panic!()
        };
        assert!(out.is_empty());
        assert_eq!(info.version, MAX_VERSION, "the highest both speak");
        assert!(l.receive(Packet::Ping).is_err());
        assert_eq!(l.peer(), Some(&info));
    }

    #[test]
    fn config_errors() {
        assert_eq!("sha256".parse::<HmacAlg>(), Ok(HmacAlg::Sha256));
        assert_eq!("hmac(SHA256)".parse::<HmacAlg>(), Ok(HmacAlg::Sha256));
        assert_eq!(
            "sha1".parse::<HmacAlg>().unwrap_err().to_string(),
            "cram-hmac-alg 'sha1' is not supported; tandem supports sha256"
        );
        let err = |c| Link::new(c, [0; 32]).unwrap_err().to_string();
        assert_eq!(
            err(config("alpha", "alpha")),
            "this node and its peer are both named 'alpha'"
        );
        assert_eq!(
            err(LinkConfig {
                resource: String::new(),
                ..config("a", "b")
            }),
            "resource name of 0 bytes, expected 1 to 255"
        );
        assert_eq!(
            err(LinkConfig {
                secret: secret(""),
                ..config("a", "b")
            }),
            "shared-secret is empty"
        );
        let shown = format!(
            "{:?}",
            LinkConfig {
                secret: secret("hunter2"),
                ..config("a", "b")
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
