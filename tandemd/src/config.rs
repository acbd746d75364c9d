//! Loading one resource's effective configuration for this node, as `drbdadm up` would.

use std::path::Path;

use drbdadm_compat::control::ControlError;
use drbdadm_compat::res::parser::{canonify, ParseOptions, Parser, E_CONFIG_INVALID};
use drbdadm_compat::res::resolve::{resolve, EffectiveResource, ResolveError};
use drbdadm_compat::res::validate::{post_parse, NodeEnv};

/// Parses `config` (with its includes), places it for `node` and resolves `resource`.
///
/// # Errors
/// The file cannot be read or parsed, the resource is unknown or not on this node, or a value
/// is refused; the message is drbdadm's, on one line, with exit code 10.
pub fn load_resource(
    config: &Path,
    resource: &str,
    node: &str,
) -> Result<EffectiveResource, ControlError> {
    let fail = |m: &str| ControlError::new(E_CONFIG_INVALID, one_line(m));
    if !config.is_absolute() {
        return Err(fail(&format!(
            "config path {} is not absolute",
            config.display()
        )));
    }
    let data = std::fs::read(config)
        .map_err(|e| fail(&format!("Can not open '{}': {e}", config.display())))?;
    let cwd = config.parent().unwrap_or(Path::new("/")).to_path_buf();
    let file = config.display().to_string();
    let save = canonify(&cwd, &file).unwrap_or_else(|| file.clone());
    let opts = ParseOptions {
        file,
        save,
        cwd,
        no_tty: true,
        follow_includes: true,
    };
    let (parsed, mut session) = Parser::parse(data, &opts);
    let mut cfg = parsed.map_err(|e| fail(&e.message))?;
    if !session.valid {
        let first = session
            .diagnostics
            .first()
            .map_or("invalid configuration", |d| d.message.as_str());
        return Err(fail(first));
    }
    let env = NodeEnv::local(Some(node.to_string()));
    post_parse(&mut cfg, &env, &mut session).map_err(|e| fail(&e.message))?;
    let res = cfg
        .resources
        .iter()
        .find(|r| r.name == resource)
        .ok_or_else(|| fail(&ResolveError::UnknownResource(resource.into()).to_string()))?;
    resolve(&cfg, res, node).map_err(|e| fail(&e.to_string()))
}

/// The first non-empty line of a message, trimmed.
pub fn one_line(m: &str) -> String {
    m.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_become_one_line() {
        assert_eq!(one_line("\n  first\nsecond\n"), "first");
    }

    #[test]
    fn a_relative_config_path_is_refused_plainly() {
        let e = load_resource(Path::new("r0.res"), "r0", "a").unwrap_err();
        assert_eq!(e.message, "config path r0.res is not absolute");
        assert_eq!(e.code, 10);
    }
}
