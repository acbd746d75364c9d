//! DRBD's configuration language and command line: the `.res` parser, the typed config model,
//! the `drbdadm` front end, its control-socket client for tandemd, the status renderers, and the
//! drbdsetup/drbdmeta command lines drbdadm-84 would run (`-d`).
//!
//! ```no_run
//! use drbdadm_compat::cli::{run, Invocation};
//! use drbdadm_compat::res::validate::NodeEnv;
//! let inv = Invocation {
//!     config: Some("/etc/drbd.conf".into()),
//!     command: "dump".into(),
//!     cwd: std::env::current_dir().unwrap(),
//!     ..Invocation::default()
//! };
//! let out = run(&inv, &NodeEnv::local(None));
//! print!("{}", out.stdout);
//! ```

pub mod cli;
pub mod control;
pub mod daemon_cli;
pub mod drbdsetup;
pub mod dump;
pub mod md;
pub mod res;
pub mod status;
