//! From a resource's effective configuration to what the engine and the peer link need:
//! [`NetConfig`] and [`LinkSpec`].

use std::net::SocketAddr;
use std::time::Duration;

use drbdadm_compat::control::ControlError;
use drbdadm_compat::res::resolve::Protocol as ResProtocol;
use drbdadm_compat::res::resolve::{EffectiveResource, EffectiveVolume, Endpoint};
use repl_core::engine::NetConfig;
use repl_core::link::LinkConfig;
use repl_core::wire::{IntegrityAlg, Protocol};

use crate::link::{secret, LinkSpec};

/// drbdadm's exit code for a configuration tandemd cannot run.
const E_CONFIG: i32 = 10;

/// The engine's `net` options and the link's setup, or `None` for a resource without a peer
/// (the node stays StandAlone).
///
/// # Errors
/// A `data-integrity-alg` or `cram-hmac-alg` tandem does not implement, an address that is not
/// an IP address.
pub fn peer_setup(
    eff: &EffectiveResource,
    vol: &EffectiveVolume,
) -> Result<Option<(NetConfig, LinkSpec)>, ControlError> {
    let Some(peer) = &eff.peer else {
        return Ok(None);
    };
    let fail = |msg: String| ControlError::new(E_CONFIG, format!("{}: {msg}", eff.name));
    let net = &eff.net;
    let protocol = match net.protocol {
        ResProtocol::A => Protocol::A,
        ResProtocol::B => Protocol::B,
        ResProtocol::C => Protocol::C,
    };
    let integrity = match net.data_integrity_alg.as_deref() {
        None => None,
        Some("crc32c") => Some(IntegrityAlg::Crc32c),
        Some(other) => {
            return Err(fail(format!(
                "data-integrity-alg '{other}' is not supported; tandem supports crc32c"
            )))
        }
    };
    let secret =
        secret(net.cram_hmac_alg.as_deref(), net.shared_secret.as_deref()).map_err(fail)?;
    let peer_node = peer.names.first().cloned().unwrap_or_default();
    let config = LinkConfig {
        resource: eff.name.clone(),
        my_node: eff.node.clone(),
        peer_node,
        protocol,
        two_primaries: net.allow_two_primaries,
        integrity,
        // Not a config option: `connect --discard-my-data` sets it for one connection.
        discard_my_data: false,
        secret,
    };
    let spec = LinkSpec {
        config,
        local: address(&eff.local).map_err(fail)?,
        peer: address(peer).map_err(fail)?,
        connect_int: Duration::from_secs(net.connect_int.max(1)),
        ping_int: Duration::from_secs(net.ping_int.max(1)),
        ping_timeout: Duration::from_millis(net.ping_timeout.max(1) * 100),
        timeout: Duration::from_millis(net.timeout.saturating_mul(100)),
        ko_count: clamp_u32(net.ko_count),
    };
    let netcfg = NetConfig {
        protocol,
        two_primaries: net.allow_two_primaries,
        integrity,
        resync_rate_kib: vol.disk_options.resync_rate.max(1),
        timeout_ds: clamp_u32(net.timeout),
        ko_count: clamp_u32(net.ko_count),
    };
    Ok(Some((netcfg, spec)))
}

/// A config number as the engine's `u32` (the parser keeps them within DRBD's ranges).
fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// An endpoint's `address` as a socket address.
fn address(e: &Endpoint) -> Result<SocketAddr, String> {
    let ip: std::net::IpAddr = e.addr.trim_matches(['[', ']']).parse().map_err(|_| {
        format!(
            "address '{}' is not an IP address (host names are not resolved)",
            e.addr
        )
    })?;
    if e.port == 0 {
        return Err(format!("address {} has no port", e.addr));
    }
    Ok(SocketAddr::new(ip, e.port))
}
