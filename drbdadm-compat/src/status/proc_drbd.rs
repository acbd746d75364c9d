//! `/proc/drbd` in the 8.4 format.

use std::fmt::Write;

use repl_core::state::{ConnState, DiskState, Role};

use super::{grouped, DeviceView, ResyncProgress, VersionInfo};

/// The whole `/proc/drbd` text: the two version lines, then each minor in ascending order. A gap
/// in the minor numbers (including a first minor above 0) gives one empty line, however wide.
pub fn proc_drbd(views: &[DeviceView], version: &VersionInfo) -> String {
    let mut out = format!(
        "version: {} (api:{}/proto:{}-{})\n{}\n",
        version.release, version.api, version.proto_min, version.proto_max, version.build_tag
    );
    let mut sorted: Vec<&DeviceView> = views.iter().collect();
    sorted.sort_by_key(|v| v.status.minor);
    let mut prev: Option<u32> = None;
    for v in sorted {
        let minor = v.status.minor;
        let follows = match prev {
            None => minor == 0,
            Some(p) => p.checked_add(1) == Some(minor),
        };
        if !follows {
            out.push('\n');
        }
        prev = Some(minor);
        device(&mut out, v);
    }
    out
}

/// Whether `/proc/drbd` shows the minor as `cs:Unconfigured` (StandAlone, Diskless, Secondary).
pub(crate) fn unconfigured(v: &DeviceView) -> bool {
    let st = v.status.state;
    st.conn == ConnState::StandAlone && st.disk == DiskState::Diskless && st.role == Role::Secondary
}

/// The six flag characters after the protocol (`r-----`).
pub(crate) fn flags(v: &DeviceView) -> String {
    [
        if v.suspended.any() { 's' } else { 'r' },
        if v.resync_pause.dependency { 'a' } else { '-' },
        if v.resync_pause.peer { 'p' } else { '-' },
        if v.resync_pause.user { 'u' } else { '-' },
        v.congestion.letter(),
        if v.al_suspended { 's' } else { '-' },
    ]
    .iter()
    .collect()
}

/// Clamped blocks left and the per-mille done of a resync or verify.
pub(crate) fn progress_per_mille(p: &ResyncProgress) -> (u64, u64) {
    per_mille(p.total, p.left)
}

fn device(out: &mut String, v: &DeviceView) {
    let s = &v.status;
    let st = s.state;
    if unconfigured(v) {
        let _ = writeln!(out, "{:2}: cs:Unconfigured", s.minor);
    } else {
        let c = &s.counters;
        let _ = writeln!(
            out,
            "{:2}: cs:{} ro:{}/{} ds:{}/{} {} {}",
            s.minor,
            st.conn,
            st.role,
            st.peer,
            st.disk,
            st.pdsk,
            v.protocol.map_or(' ', |p| p.letter()),
            flags(v),
        );
        let _ = writeln!(
            out,
            "    ns:{} nr:{} dw:{} dr:{} al:{} bm:{} lo:{} pe:{} ua:{} ap:{} ep:{} wo:{} oos:{}",
            c.ns,
            c.nr,
            c.dw,
            c.dr,
            c.al,
            c.bm,
            c.lo,
            c.pe,
            c.ua,
            c.ap,
            v.epochs,
            v.write_ordering.letter(),
            s.out_of_sync,
        );
    }
    let shows_progress = matches!(
        st.conn,
        ConnState::SyncSource | ConnState::SyncTarget | ConnState::VerifyS | ConnState::VerifyT
    );
    if let (true, Some(p)) = (shows_progress, v.resync.as_ref()) {
        progress(out, st.conn, p);
    }
}

/// Clamped bits left and the per-mille done, as `drbd_get_syncer_progress` computes them.
fn per_mille(total: u64, left: u64) -> (u64, u64) {
    if left > total {
        return (total, if total == 0 { 1000 } else { 0 });
    }
    let shift = if total > u64::from(u32::MAX) { 16 } else { 10 };
    let l = left >> shift;
    let t = 1 + (total >> shift);
    (left, 1000 - l * 1000 / t)
}

/// The two-line progress block (`drbd_syncer_progress`, `proc_details` 0).
fn progress(out: &mut String, conn: ConnState, p: &ResyncProgress) {
    let verify = matches!(conn, ConnState::VerifyS | ConnState::VerifyT);
    let (left, res) = per_mille(p.total, p.left);
    let x = (res / 50) as usize;
    out.push_str("\t[");
    out.push_str(&"=".repeat(x.saturating_sub(1)));
    out.push('>');
    out.push_str(&".".repeat(20 - x));
    out.push_str("] ");
    out.push_str(if verify { "verified:" } else { "sync'ed:" });
    let _ = write!(out, "{:3}.{}% ", res / 10, res % 10);
    // More than 4 GiB of bits: MiB, else KiB (a bit is 4 KiB).
    if p.total > 1 << 20 {
        let _ = write!(out, "({}/{})M", (left >> 10) * 4, (p.total >> 10) * 4);
    } else {
        let _ = write!(out, "({}/{})K", left * 4, p.total * 4);
    }
    out.push_str("\n\t");

    let stalled = p.mark_age_secs > 180;
    let dt = p.mark_age_secs.max(1);
    let db = p.mark_left.saturating_sub(left);
    let rt = dt.saturating_mul(left / (db / 100 + 1)) / 100;
    let _ = write!(
        out,
        "finish: {}:{:02}:{:02} speed: {} (",
        rt / 3600,
        (rt % 3600) / 60,
        rt % 60,
        grouped(db / dt * 4)
    );
    let dt = p.active_secs.max(1);
    let db = p.total - left;
    out.push_str(&grouped(db / dt * 4));
    out.push(')');
    if matches!(conn, ConnState::SyncTarget | ConnState::VerifyS) {
        out.push_str(" want: ");
        out.push_str(&grouped(p.want_kib));
    }
    out.push_str(" K/sec");
    if stalled {
        out.push_str(" (stalled)");
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::view;
    use crate::status::{Congestion, Protocol, ResyncPause, Suspended, WriteOrdering};
    use repl_core::status::Counters;
    use ConnState::*;
    use DiskState::*;
    use Role::*;

    fn v84() -> VersionInfo {
        VersionInfo::v84("8.4.11", "srcversion: 9B671CCC1F00886BA069043")
    }

    const HEADER: &str =
        "version: 8.4.11 (api:1/proto:86-101)\nsrcversion: 9B671CCC1F00886BA069043\n";

    #[test]
    fn version_lines() {
        let v = VersionInfo::v84(
            "8.4.12-1",
            "GIT-hash: 0123456789abcdef build by root@build, 2022-11-21 14:01:58",
        );
        assert_eq!(
            proc_drbd(&[], &v),
            "version: 8.4.12-1 (api:1/proto:86-101)\n\
             GIT-hash: 0123456789abcdef build by root@build, 2022-11-21 14:01:58\n"
        );
    }

    #[test]
    fn standalone_primary_no_peer() {
        let mut d = view(
            "r0",
            0,
            0,
            (Primary, Unknown),
            StandAlone,
            (UpToDate, DUnknown),
        );
        d.status.counters = Counters {
            dw: 4096,
            dr: 8200,
            al: 3,
            ..Counters::default()
        };
        d.status.out_of_sync = 4096;
        assert_eq!(
            proc_drbd(&[d], &v84()),
            format!(
                "{HEADER} 0: cs:StandAlone ro:Primary/Unknown ds:UpToDate/DUnknown   r-----\n    \
                 ns:0 nr:0 dw:4096 dr:8200 al:3 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:4096\n"
            )
        );
    }

    #[test]
    fn wfconnection_secondary() {
        let d = view(
            "r0",
            0,
            1,
            (Secondary, Unknown),
            WFConnection,
            (UpToDate, DUnknown),
        );
        assert_eq!(
            proc_drbd(&[d], &v84()),
            format!(
                "{HEADER}\n 1: cs:WFConnection ro:Secondary/Unknown ds:UpToDate/DUnknown C r-----\n    \
                 ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0\n"
            )
        );
    }

    #[test]
    fn connected_uptodate_protocol_c() {
        let mut d = view(
            "r0",
            0,
            0,
            (Primary, Secondary),
            Connected,
            (UpToDate, UpToDate),
        );
        d.status.counters = Counters {
            ns: 1_048_576,
            nr: 0,
            dw: 1_048_576,
            dr: 2_120,
            al: 17,
            bm: 0,
            lo: 1,
            pe: 2,
            ua: 0,
            ap: 2,
        };
        d.write_ordering = WriteOrdering::Drain;
        d.epochs = 2;
        assert_eq!(
            proc_drbd(&[d], &v84()),
            format!(
                "{HEADER} 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----\n    \
                 ns:1048576 nr:0 dw:1048576 dr:2120 al:17 bm:0 lo:1 pe:2 ua:0 ap:2 ep:2 wo:d oos:0\n"
            )
        );
    }

    #[test]
    fn flags_in_order() {
        let mut d = view(
            "r0",
            0,
            0,
            (Secondary, Primary),
            PausedSyncT,
            (Inconsistent, UpToDate),
        );
        d.protocol = Some(Protocol::A);
        d.suspended = Suspended {
            fencing: true,
            ..Suspended::default()
        };
        d.resync_pause = ResyncPause {
            user: true,
            peer: true,
            dependency: true,
        };
        d.congestion = Congestion::Both;
        d.al_suspended = true;
        d.write_ordering = WriteOrdering::Barrier;
        let text = proc_drbd(&[d], &v84());
        assert!(text.contains(" A sapuas\n"), "{text}");
        assert!(text.contains(" wo:b "), "{text}");
        // No progress block while paused.
        assert!(!text.contains('['), "{text}");
    }

    /// The 8.4 kernel example of the reference (LINBIT/drbd#61); the rates are ours.
    #[test]
    fn sync_source_mib_form() {
        let mut d = view(
            "r0",
            0,
            0,
            (Primary, Secondary),
            SyncSource,
            (UpToDate, Inconsistent),
        );
        d.status.counters = Counters {
            ns: 180_441_216,
            dr: 180_441_216,
            al: 16,
            ..Counters::default()
        };
        d.status.out_of_sync = 794_704_668;
        // 952288 MiB = 238072 << 10 bits; left 776076 MiB = 194019 << 10 bits.
        d.resync = Some(ResyncProgress {
            total: 238_072 << 10,
            left: 194_019 << 10,
            mark_left: (194_019 << 10) + 20 * 10_120,
            mark_age_secs: 20,
            active_secs: 4_400,
            want_kib: 0,
        });
        let text = proc_drbd(&[d], &v84());
        let expected = format!(
            "{HEADER} 0: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----\n    \
             ns:180441216 nr:0 dw:0 dr:180441216 al:16 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:794704668\n\
             \t[==>.................] sync'ed: 18.6% (776076/952288)M\n\
             \tfinish: 5:27:02 speed: 40,480 (41,008) K/sec\n"
        );
        assert_eq!(text, expected);
    }

    /// The 8.3.12 drbd-user example of the reference: SyncTarget, KiB form, with `want`.
    #[test]
    fn sync_target_kib_form_with_want() {
        let mut d = view(
            "r0",
            0,
            0,
            (Secondary, Primary),
            SyncTarget,
            (Inconsistent, UpToDate),
        );
        d.status.out_of_sync = 1_039_000;
        // 2031448 KiB = 507862 bits; 1039000 KiB = 259750 bits.
        d.resync = Some(ResyncProgress {
            total: 507_862,
            left: 259_750,
            mark_left: 259_750 + 21_280,
            mark_age_secs: 18,
            active_secs: 150,
            want_kib: 51_200,
        });
        let text = proc_drbd(&[d], &v84());
        let block = text.split_once("oos:1039000\n").unwrap().1;
        assert_eq!(
            block,
            "\t[========>...........] sync'ed: 49.0% (1039000/2031448)K\n\
             \tfinish: 0:03:39 speed: 4,728 (6,616) want: 51,200 K/sec\n"
        );
    }

    #[test]
    fn verify_and_stalled() {
        let mut d = view(
            "r0",
            0,
            0,
            (Primary, Secondary),
            VerifyS,
            (UpToDate, UpToDate),
        );
        d.resync = Some(ResyncProgress {
            total: 100_000,
            left: 100_000,
            mark_left: 100_000,
            mark_age_secs: 181,
            active_secs: 0,
            want_kib: 800,
        });
        let text = proc_drbd(&[d], &v84());
        let block = text.split_once("oos:0\n").unwrap().1;
        assert_eq!(
            block,
            "\t[>....................] verified:  1.1% (400000/400000)K\n\
             \tfinish: 50:16:40 speed: 0 (0) want: 800 K/sec (stalled)\n"
        );
    }

    #[test]
    fn bar_ends() {
        let mut d = view(
            "r0",
            0,
            0,
            (Primary, Secondary),
            SyncSource,
            (UpToDate, Inconsistent),
        );
        d.resync = Some(ResyncProgress {
            total: 4096,
            left: 0,
            mark_left: 0,
            mark_age_secs: 0,
            active_secs: 0,
            want_kib: 0,
        });
        let text = proc_drbd(std::slice::from_ref(&d), &v84());
        assert!(
            text.contains("\t[===================>] sync'ed:100.0% (0/16384)K\n\tfinish: 0:00:00 speed: 0 (16,384) K/sec\n"),
            "{text}"
        );
        // Left above total (a race in DRBD): clamped, 0 % done.
        d.resync = Some(ResyncProgress {
            total: 10,
            left: 11,
            ..ResyncProgress::default()
        });
        let text = proc_drbd(&[d], &v84());
        assert!(
            text.contains("\t[>....................] sync'ed:  0.0% (40/40)K\n"),
            "{text}"
        );
    }

    #[test]
    fn per_mille_large_bitmap_uses_shift_16() {
        let total = 1u64 << 40;
        assert_eq!(per_mille(total, total / 2), (total / 2, 501));
        assert_eq!(per_mille(0, 0), (0, 1000));
        assert_eq!(per_mille(0, 5), (0, 1000));
    }

    #[test]
    fn unconfigured_minor_and_gaps() {
        let a = view(
            "r0",
            0,
            0,
            (Secondary, Unknown),
            StandAlone,
            (Diskless, DUnknown),
        );
        let b = view(
            "r1",
            0,
            1,
            (Secondary, Secondary),
            Connected,
            (UpToDate, UpToDate),
        );
        let c = view(
            "r2",
            0,
            5,
            (Secondary, Secondary),
            Connected,
            (UpToDate, UpToDate),
        );
        // Given out of order; printed by minor.
        let text = proc_drbd(&[c, a, b], &v84());
        let counters = "    ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0\n";
        assert_eq!(
            text,
            format!(
                "{HEADER} 0: cs:Unconfigured\n \
                 1: cs:Connected ro:Secondary/Secondary ds:UpToDate/UpToDate C r-----\n{counters}\
                 \n 5: cs:Connected ro:Secondary/Secondary ds:UpToDate/UpToDate C r-----\n{counters}"
            )
        );
    }

    #[test]
    fn primary_diskless_standalone_is_not_unconfigured() {
        let d = view(
            "r0",
            0,
            10,
            (Primary, Unknown),
            StandAlone,
            (Diskless, DUnknown),
        );
        let text = proc_drbd(&[d], &v84());
        assert!(
            text.contains("\n10: cs:StandAlone ro:Primary/Unknown ds:Diskless/DUnknown   r-----\n")
        );
    }
}
