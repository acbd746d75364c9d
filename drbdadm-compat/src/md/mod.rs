//! The offline metadata commands (`create-md`, `dump-md`, `get-gi`, `show-gi`, `wipe-md`,
//! `apply-al`) that drbdadm hands to `drbdmeta MINOR v08 DEV internal|flex-external CMD`. They
//! read and write the v08 formats of `repl_core::meta`/`al` on the metadata device directly;
//! no daemon is involved. Every check runs before the first write, so a refusal touches nothing.

pub mod commands;
pub mod device;
pub mod format;
pub mod probe;

use std::path::PathBuf;

use crate::res::ast::Volume;
use crate::res::resolve::MetaDisk;

pub use commands::run;

/// One of the offline metadata commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MdCommand {
    CreateMd,
    DumpMd,
    GetGi,
    ShowGi,
    WipeMd,
    ApplyAl,
}

impl MdCommand {
    /// The command for a drbdadm command word, if it is one of these.
    pub fn parse(word: &str) -> Option<MdCommand> {
        Some(match word {
            "create-md" => MdCommand::CreateMd,
            "dump-md" => MdCommand::DumpMd,
            "get-gi" => MdCommand::GetGi,
            "show-gi" => MdCommand::ShowGi,
            "wipe-md" => MdCommand::WipeMd,
            "apply-al" => MdCommand::ApplyAl,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MdCommand::CreateMd => "create-md",
            MdCommand::DumpMd => "dump-md",
            MdCommand::GetGi => "get-gi",
            MdCommand::ShowGi => "show-gi",
            MdCommand::WipeMd => "wipe-md",
            MdCommand::ApplyAl => "apply-al",
        }
    }

    /// Whether the command writes to the device.
    pub fn writes(self) -> bool {
        matches!(
            self,
            MdCommand::CreateMd | MdCommand::WipeMd | MdCommand::ApplyAl
        )
    }
}

/// Where one volume's metadata lives, as drbdadm would pass it to drbdmeta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `RES` or `RES/VOL`, for the hints in messages.
    pub spec: String,
    pub minor: u32,
    /// The metadata device as written in the config (the backing disk for internal).
    pub md_name: String,
    /// The same, relative paths taken from the working directory.
    pub md_path: PathBuf,
    pub meta: MetaDisk,
}

impl Target {
    /// The target of volume `v` of resource `res`, or the error to print.
    ///
    /// # Errors
    /// `Diskless` for `disk none`, `NoMetaDisk` when the volume has no `meta-disk`.
    pub fn of_volume(
        res: &str,
        v: &Volume,
        whole_resource: bool,
        cwd: &std::path::Path,
    ) -> Result<Target, MdError> {
        let spec = if whole_resource {
            res.to_string()
        } else {
            format!("{res}/{}", v.vnr)
        };
        let disk = v.disk.as_deref().filter(|d| *d != "none");
        let meta = match (v.meta_disk.as_deref(), v.meta_index.as_deref()) {
            (Some("internal"), _) => MetaDisk::Internal,
            (Some(d), Some("flexible")) => MetaDisk::FlexExternal { device: d.into() },
            (Some(d), Some(i)) => MetaDisk::Indexed {
                device: d.into(),
                index: crate::res::units::atoi(i),
            },
            _ => return Err(MdError::NoMetaDisk { spec }),
        };
        let md_name = match &meta {
            MetaDisk::Internal => match disk {
                Some(d) => d.to_string(),
                None => return Err(MdError::Diskless { spec }),
            },
            MetaDisk::FlexExternal { device } | MetaDisk::Indexed { device, .. } => device.clone(),
        };
        Ok(Target {
            md_path: cwd.join(&md_name),
            md_name,
            minor: v.minor.unwrap_or(0),
            spec,
            meta,
        })
    }

    /// drbdmeta's index argument: `internal`, `flex-external` or the slot number.
    pub fn index_arg(&self) -> String {
        match &self.meta {
            MetaDisk::Internal => "internal".into(),
            MetaDisk::FlexExternal { .. } => "flex-external".into(),
            MetaDisk::Indexed { index, .. } => index.to_string(),
        }
    }
}

/// How a command may proceed past drbdmeta's confirmations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `--force`: answer yes to every confirmation (drbdmeta's `--force`).
    pub force: bool,
    /// Standard input and output are terminals: ask instead of refusing.
    pub interactive: bool,
}

/// What a command printed when it succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub stdout: String,
    pub stderr: String,
}

/// Why a command refused or failed; each message is one line naming the device and the remedy.
#[derive(Debug, thiserror::Error)]
pub enum MdError {
    #[error(
        "open({path}) failed: {source}; check the 'disk'/'meta-disk' path of {spec} in the config"
    )]
    Open {
        path: String,
        spec: String,
        source: std::io::Error,
    },
    #[error("'{path}' is neither a regular file nor a block device; point 'disk'/'meta-disk' of {spec} at one")]
    NotADevice { path: String, spec: String },
    #[error("{op} of {len} bytes at byte offset {offset} of {path} failed: {source}")]
    Io {
        op: &'static str,
        path: String,
        offset: u64,
        len: u64,
        source: std::io::Error,
    },
    #[error("{path} is only {bytes} bytes. That's not enough; v08 meta data needs a device of at least 69632 bytes")]
    TooSmall { path: String, bytes: u64 },
    #[error("Bitmap for that device got too large: {path} is {bytes} bytes, more than v08 meta data can describe")]
    TooLarge { path: String, bytes: u64 },
    #[error("No valid meta data found on {path} ({reason}); run 'drbdadm create-md {spec}' first")]
    NoMetadata {
        path: String,
        spec: String,
        reason: String,
    },
    #[error("Found meta data on {path} is \"unclean\", please apply-al first ('drbdadm apply-al {spec}')")]
    Unclean { path: String, spec: String },
    #[error("There appears to be a v08 flexible-size internal meta data block already in place on {path} at byte offset {offset}; 'drbdadm create-md --force {spec}' overwrites it. Operation cancelled.")]
    ExistingInternal {
        path: String,
        spec: String,
        offset: u64,
    },
    #[error("Valid meta data seems to be in place on {path}; 'drbdadm create-md --force {spec}' overwrites it. Operation cancelled.")]
    ExistingExternal { path: String, spec: String },
    #[error("Found {what} on {path} ({used_kb} kB data area apparently used, {usable_kb} kB left usable by current configuration): device size would be truncated; use external meta data (recommended), shrink that filesystem first, or zero out the device (destroy the filesystem). Operation refused.")]
    WouldTruncate {
        what: String,
        path: String,
        used_kb: u64,
        usable_kb: u64,
    },
    #[error("Found {what} on {path}. This would corrupt existing data; zero out the first part of the device (destroy the content) if you mean it. Operation refused.")]
    WouldCorrupt { what: String, path: String },
    #[error("Found {what} on {path}{detail}; this might destroy existing data, 'drbdadm create-md --force {spec}' proceeds anyway. Operation canceled.")]
    ExistingData {
        what: String,
        path: String,
        detail: String,
        spec: String,
    },
    #[error("Do you really want to wipe out the DRBD meta data on {path}? 'drbdadm wipe-md --force {spec}' does. Operation cancelled.")]
    WipeNotConfirmed { path: String, spec: String },
    #[error("No usable activity log found on {path} ({reason}) although the node was Primary. Do you need to create-md?")]
    NoUsableAl { path: String, reason: String },
    #[error("No valid AL update transaction found on {path} ({reason}) although the node was Primary; the bitmap cannot be completed from the AL, 'drbdadm invalidate {spec}' forces a full sync")]
    CorruptAl {
        path: String,
        spec: String,
        reason: String,
    },
    #[error("meta-disk {path} [{index}] of {spec}: indexed external meta data is not supported by tandem; use 'meta-disk {path};' (flexible) or 'meta-disk internal;'")]
    Indexed {
        path: String,
        index: u32,
        spec: String,
    },
    #[error(
        "{spec} has no backing disk on this node ('disk none'); there is no meta data to work on"
    )]
    Diskless { spec: String },
    #[error("{spec} has no 'meta-disk' on this node; add 'meta-disk internal;' to the config")]
    NoMetaDisk { spec: String },
}

impl MdError {
    /// The exit code drbdmeta uses for the same condition.
    pub fn exit_code(&self) -> i32 {
        match self {
            MdError::Open { .. }
            | MdError::NotADevice { .. }
            | MdError::Io { .. }
            | MdError::Indexed { .. } => 20,
            MdError::TooSmall { .. }
            | MdError::TooLarge { .. }
            | MdError::Diskless { .. }
            | MdError::NoMetaDisk { .. } => 10,
            MdError::WouldTruncate { .. } | MdError::WouldCorrupt { .. } => 40,
            MdError::CorruptAl { .. } => 2,
            MdError::NoMetadata { .. }
            | MdError::Unclean { .. }
            | MdError::ExistingInternal { .. }
            | MdError::ExistingExternal { .. }
            | MdError::ExistingData { .. }
            | MdError::WipeNotConfirmed { .. }
            | MdError::NoUsableAl { .. } => 1,
        }
    }
}
