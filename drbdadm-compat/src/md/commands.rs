//! The commands themselves: load and check the superblock, refuse or confirm, then write in
//! drbdmeta's order (bitmap, activity log, superblock last) and sync.

use std::fmt::Write as _;
use std::io::{BufRead, Write as _};

use repl_core::al::{self, AlError, Extent};
use repl_core::meta::{
    self, bitmap_bytes, AlGeometry, Layout, MdFlags, MdState, MetaError, MetaWrite, Placement,
    Superblock, BLOCK_BYTES, MIN_DEVICE_BYTES,
};
use repl_core::types::Sector;

use super::device::MdDevice;
use super::format::{self, ppsize};
use super::probe::{self, Found, PROBE_BYTES};
use super::{MdCommand, MdError, Options, Report, Target};
use crate::res::resolve::MetaDisk;

/// Bitmap bytes per 4 MiB AL extent (`BM_BYTES_PER_AL_EXT`).
const BM_BYTES_PER_EXTENT: u64 = 128;

/// Runs `cmd` on the metadata of `target`.
///
/// # Errors
/// The refusal or failure to print (one line) with its exit code; nothing was written unless
/// the error is an I/O error during the writes.
pub fn run(cmd: MdCommand, target: &Target, opts: Options) -> Result<Report, MdError> {
    let placement = match &target.meta {
        MetaDisk::Internal => Placement::Internal,
        MetaDisk::FlexExternal { .. } => Placement::FlexExternal,
        MetaDisk::Indexed { device, index } => {
            return Err(MdError::Indexed {
                path: device.clone(),
                index: *index,
                spec: target.spec.clone(),
            })
        }
    };
    let dev = MdDevice::open(target, cmd.writes())?;
    if dev.size < MIN_DEVICE_BYTES {
        return Err(MdError::TooSmall {
            path: dev.name.clone(),
            bytes: dev.size,
        });
    }
    let md = Md {
        dev,
        placement,
        target,
        opts,
    };
    match cmd {
        MdCommand::CreateMd => md.create_md(),
        MdCommand::DumpMd => md.dump_md(),
        MdCommand::GetGi => Ok(Report {
            stdout: format::gi_line(&md.load()?.0),
            stderr: String::new(),
        }),
        MdCommand::ShowGi => Ok(Report {
            stdout: format::show_gi(&md.load()?.0),
            stderr: String::new(),
        }),
        MdCommand::WipeMd => md.wipe_md(),
        MdCommand::ApplyAl => md.apply_al(),
    }
}

/// One open metadata device and what the command needs to know about it.
struct Md<'a> {
    dev: MdDevice,
    placement: Placement,
    target: &'a Target,
    opts: Options,
}

impl Md<'_> {
    /// Byte offset where the superblock must be.
    fn md_offset(&self) -> u64 {
        match self.placement {
            Placement::Internal => (self.dev.size - BLOCK_BYTES) & !(BLOCK_BYTES - 1),
            Placement::FlexExternal => 0,
        }
    }

    fn no_md(&self, reason: String) -> MdError {
        MdError::NoMetadata {
            path: self.dev.name.clone(),
            spec: self.target.spec.clone(),
            reason,
        }
    }

    fn size_err(&self, e: MetaError) -> MdError {
        match e {
            MetaError::DeviceTooLarge { bytes } => MdError::TooLarge {
                path: self.dev.name.clone(),
                bytes,
            },
            _ => MdError::TooSmall {
                path: self.dev.name.clone(),
                bytes: self.dev.size,
            },
        }
    }

    /// The superblock and the layout it describes, checked against the device as drbdmeta's
    /// `is_valid_md` does.
    fn load(&self) -> Result<(Superblock, Layout), MdError> {
        let at = self.md_offset();
        let block = self.dev.read(at, BLOCK_BYTES)?;
        let sb = Superblock::decode(&block).map_err(|e| match e {
            MetaError::BadMagic(m) => {
                self.no_md(format!("no v08 magic at byte offset {at}, found {m:#010x}"))
            }
            e => self.no_md(format!("superblock at byte offset {at}: {e}")),
        })?;
        let layout =
            Layout::of_superblock(&sb, self.placement, self.dev.size).map_err(|e| match e {
                MetaError::OffsetMismatch { .. } => self.no_md(format!(
                    "superblock at byte offset {at} does not fit a device of {} bytes: {e}",
                    self.dev.size
                )),
                e => self.size_err(e),
            })?;
        Ok((sb, layout))
    }

    /// drbdmeta's `confirmed`: yes under `--force`, a typed "yes" on a terminal, else no.
    fn confirmed(&self, question: &str, report: &mut Report) -> bool {
        if self.opts.force {
            let _ = write!(
                report.stderr,
                "\n{question}\n*** confirmation forced via --force option ***\n"
            );
            return true;
        }
        if !self.opts.interactive {
            return false;
        }
        let mut err = std::io::stderr();
        let _ = err.write_all(report.stderr.as_bytes());
        report.stderr.clear();
        let _ = write!(err, "\n{question}\n[need to type 'yes' to confirm] ");
        let _ = err.flush();
        let mut answer = String::new();
        let ok = std::io::stdin().lock().read_line(&mut answer).is_ok() && answer == "yes\n";
        let _ = writeln!(err);
        ok
    }

    fn create_md(&self) -> Result<Report, MdError> {
        let mut report = Report::default();
        let geom = AlGeometry::default();
        let layout = match self.placement {
            Placement::Internal => Layout::internal(self.dev.size, geom),
            Placement::FlexExternal => Layout::flex_external(self.dev.size, geom),
        }
        .map_err(|e| self.size_err(e))?;
        let path = &self.dev.name;
        let spec = self.target.spec.clone();
        match self.load() {
            Ok(_) => match self.placement {
                Placement::Internal => {
                    let _ = write!(
                        report.stderr,
                        "You want me to create a v08 style flexible-size internal meta data block.\n\
                         There appears to be a v08 flexible-size internal meta data block\n\
                         already in place on {path} at byte offset {}\n",
                        layout.md_offset
                    );
                    let q = "Do you really want to overwrite the existing meta-data?";
                    if !self.confirmed(q, &mut report) {
                        return Err(MdError::ExistingInternal {
                            path: path.clone(),
                            spec,
                            offset: layout.md_offset,
                        });
                    }
                }
                Placement::FlexExternal => {
                    let q =
                        "Valid meta data seems to be in place.\nDo you really want to overwrite?";
                    if !self.confirmed(q, &mut report) {
                        return Err(MdError::ExistingExternal {
                            path: path.clone(),
                            spec,
                        });
                    }
                }
            },
            Err(MdError::NoMetadata { .. }) => {}
            Err(e) => return Err(e),
        }
        self.check_existing_data(&layout, &mut report)?;

        let fresh = Superblock::fresh(&layout);
        report.stdout.push_str("initializing activity log\n");
        let _ = writeln!(
            report.stderr,
            "initializing bitmap ({}) to all zero",
            ppsize(layout.bm_bytes >> 10)
        );
        for w in meta::create_md(&layout, &fresh) {
            match w {
                MetaWrite::Zeroes { offset, len } => self.dev.zero(offset, len)?,
                MetaWrite::Data { offset, bytes } => {
                    if offset == layout.md_offset {
                        // Everything before the superblock must be durable first.
                        self.dev.sync()?;
                        report.stdout.push_str("Writing meta data...\n");
                    }
                    self.dev.write(offset, &bytes)?;
                }
            }
        }
        self.dev.sync()?;
        report
            .stdout
            .push_str("New drbd meta data block successfully created.\n");
        Ok(report)
    }

    /// drbdmeta's `check_for_existing_data` on the first 68 KiB of the metadata device.
    fn check_existing_data(&self, layout: &Layout, report: &mut Report) -> Result<(), MdError> {
        let len = (PROBE_BYTES as u64).min(self.dev.size);
        let Some(found) = probe::probe(&self.dev.read(0, len)?) else {
            return Ok(());
        };
        let path = self.dev.name.clone();
        let what = found.what().to_string();
        let external = self.placement == Placement::FlexExternal;
        let usable_kb = format::max_usable(&Superblock::fresh(layout), layout) >> 1;
        let mut notes = format!(
            "md_offset {}\nal_offset {}\nbm_offset {}\n\nFound {what}\n",
            layout.md_offset,
            layout.al_start(),
            layout.bm_start()
        );
        let detail = match found {
            Found::Unsized { .. } => return Err(MdError::WouldCorrupt { what, path }),
            Found::FileSystem { .. } if external => {
                return Err(MdError::WouldCorrupt { what, path })
            }
            Found::FileSystem { bytes, .. } => {
                let used_kb = bytes.div_ceil(1024);
                if used_kb > usable_kb {
                    return Err(MdError::WouldTruncate {
                        what,
                        path,
                        used_kb,
                        usable_kb,
                    });
                }
                let _ = write!(
                    notes,
                    "{used_kb:>12} kB data area apparently used\n\
                     {usable_kb:>12} kB left usable by current configuration\n\n\
                     Even though it looks like this would place the new meta data into\n\
                     unused space, you still need to confirm, as this is only a guess.\n"
                );
                format!(" ({used_kb} kB data area apparently used, {usable_kb} kB left usable by current configuration)")
            }
            Found::SomeData => {
                notes.push_str("\n ==> This might destroy existing data! <==\n");
                String::new()
            }
        };
        report.stdout.push_str(&notes);
        if self.confirmed("Do you want to proceed?", report) {
            return Ok(());
        }
        Err(MdError::ExistingData {
            what,
            path,
            detail,
            spec: self.target.spec.clone(),
        })
    }

    /// `la-size-sect` clipped to what the metadata can describe, and whether it was clipped.
    fn la_size(sb: &Superblock, layout: &Layout) -> (u64, bool) {
        let max = format::max_usable(sb, layout);
        (sb.la_size.0.min(max), sb.la_size.0 > max)
    }

    fn dump_md(&self) -> Result<Report, MdError> {
        let (sb, layout) = self.load()?;
        let mut report = Report::default();
        let clean = sb.state == MdState::Clean && sb.flags.contains(MdFlags::AL_CLEAN);
        if !clean {
            if !self.opts.force {
                return Err(MdError::Unclean {
                    path: self.dev.name.clone(),
                    spec: self.target.spec.clone(),
                });
            }
            report
                .stderr
                .push_str("Found meta data is \"unclean\", please apply-al first\n");
        }
        let (la, clipped) = Self::la_size(&sb, &layout);
        if clipped {
            let _ = writeln!(
                report.stdout,
                "# la-size-sect was too big ({}), truncated ({la})!",
                sb.la_size.0
            );
        }
        let bm = self.dev.read(layout.bm_start(), bitmap_bytes(Sector(la)))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut line = format!(
            "drbdmeta {} v08 {} {} dump-md",
            self.target.minor,
            self.target.md_name,
            self.target.index_arg()
        );
        if self.opts.force {
            line.push_str(" --force");
        }
        report.stdout.push_str(&format::dump_header(
            now,
            &crate::res::validate::uname_n(),
            &line,
        ));
        report
            .stdout
            .push_str(&format::dump_body(&sb, &layout, la, &bm));
        Ok(report)
    }

    fn wipe_md(&self) -> Result<Report, MdError> {
        let mut report = Report::default();
        match self.load() {
            Ok(_) => {}
            Err(MdError::NoMetadata { .. }) => {
                report
                    .stderr
                    .push_str("There appears to be no drbd meta data to wipe out?\n");
                return Ok(report);
            }
            Err(e) => return Err(e),
        }
        if !self.confirmed(
            "Do you really want to wipe out the DRBD meta data?",
            &mut report,
        ) {
            return Err(MdError::WipeNotConfirmed {
                path: self.dev.name.clone(),
                spec: self.target.spec.clone(),
            });
        }
        report.stdout.push_str("Wiping meta data...\n");
        self.dev
            .write(self.md_offset(), &[0; BLOCK_BYTES as usize])?;
        self.dev.sync()?;
        report
            .stdout
            .push_str("DRBD meta data block successfully wiped out.\n");
        Ok(report)
    }

    fn apply_al(&self) -> Result<Report, MdError> {
        let (sb, layout) = self.load()?;
        let mut report = Report::default();
        let path = self.dev.name.clone();
        let must = sb.must_apply_al();
        let ring = self.dev.read(layout.al_start(), layout.al_bytes())?;
        let (hot, reinit) = match al::replay(&ring, sb.al) {
            Ok(r) => {
                if r.corrupt > 0 {
                    let _ = writeln!(report.stderr, "{} corrupt AL transactions found", r.corrupt);
                }
                (r.hot, r.newest.is_some())
            }
            Err(e) => {
                let reason = match &e {
                    AlError::Corrupt { corrupt } => {
                        format!("{corrupt} corrupt AL transactions and no update transaction")
                    }
                    e => e.to_string(),
                };
                if must {
                    return Err(match e {
                        AlError::Corrupt { .. } => MdError::CorruptAl {
                            path,
                            spec: self.target.spec.clone(),
                            reason,
                        },
                        _ => MdError::NoUsableAl { path, reason },
                    });
                }
                let _ = writeln!(
                    report.stderr,
                    "No usable activity log found ({reason}).\nError ignored, no need to apply the AL"
                );
                (Vec::new(), true)
            }
        };
        let mut update_sb = sb.state != MdState::Clean || !sb.flags.contains(MdFlags::AL_CLEAN);
        if reinit && must {
            let (la, _) = Self::la_size(&sb, &layout);
            let mut bm = self.dev.read(layout.bm_start(), bitmap_bytes(Sector(la)))?;
            let added = mark_extents(&mut bm, &hot, &mut report.stderr);
            if hot.is_empty() {
                report.stderr.push_str("Nothing to do.\n");
            } else {
                self.dev.write(layout.bm_start(), &bm)?;
                self.dev.sync()?;
                let _ = writeln!(
                    report.stderr,
                    "Marked additional {} as out-of-sync based on AL.",
                    ppsize(added * 4)
                );
            }
            update_sb = true;
        }
        if reinit {
            self.dev
                .write(layout.al_start(), &al::initialized_ring(sb.al))?;
            self.dev.sync()?;
        }
        if update_sb {
            self.dev
                .write(layout.md_offset, &sb.al_applied().encode())?;
            self.dev.sync()?;
        }
        Ok(report)
    }
}

/// Sets the 128 bitmap bytes of every hot extent (clipped to the end of `bm`) as drbdmeta's
/// `apply_al` does; returns how many bits were newly set.
fn mark_extents(bm: &mut [u8], hot: &[Extent], warnings: &mut String) -> u64 {
    let len = bm.len() as u64;
    let mut added = 0;
    for e in hot {
        let pos = u64::from(e.0) * BM_BYTES_PER_EXTENT;
        if pos >= len {
            let _ = writeln!(
                warnings,
                "extent {} beyond end of bitmap! ({pos} >= {len})",
                e.0
            );
            continue;
        }
        let end = (pos + BM_BYTES_PER_EXTENT).min(len);
        for b in &mut bm[pos as usize..end as usize] {
            added += u64::from(b.count_zeros());
            *b = 0xff;
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marking_clips_and_counts() {
        let mut bm = vec![0u8; 4096];
        bm[0] = 0x0f;
        let mut w = String::new();
        let added = mark_extents(&mut bm, &[Extent(0), Extent(31), Extent(32)], &mut w);
        assert_eq!(added, 128 * 8 - 4 + 128 * 8);
        assert!(bm[..128].iter().all(|&b| b == 0xff));
        assert!(bm[128..3968].iter().all(|&b| b == 0));
        assert_eq!(w, "extent 32 beyond end of bitmap! (4096 >= 4096)\n");
    }
}
