//! Medians over rounds and the plain-text tables the harness prints.

use crate::fio::{Metric, Row, Sample};
use crate::server::Server;

/// One fio run plus the server's CPU use during it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    /// What fio measured.
    pub sample: Sample,
    /// The server's CPU use (all threads), percent of one core over the run's wall time.
    pub server_cpu_pct: f64,
}

/// Medians of one server's measures on one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub mib_s: f64,
    pub iops: f64,
    pub lat_p50_us: f64,
    pub fio_cpu_pct: f64,
    pub server_cpu_pct: f64,
}

impl Summary {
    /// Each field's median over `measures`; `None` when there are none.
    pub fn of(measures: &[Measure]) -> Option<Summary> {
        let m = |f: fn(&Measure) -> f64| median(measures.iter().map(f).collect());
        Some(Summary {
            mib_s: m(|x| x.sample.bw_bytes / f64::from(1 << 20))?,
            iops: m(|x| x.sample.iops)?,
            lat_p50_us: m(|x| x.sample.lat_p50_us)?,
            fio_cpu_pct: m(|x| x.sample.cpu_pct)?,
            server_cpu_pct: m(|x| x.server_cpu_pct)?,
        })
    }

    /// The figure a row's ratios compare: MiB/s or IOPS.
    pub fn headline(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Bandwidth => self.mib_s,
            Metric::Iops => self.iops,
        }
    }
}

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One row's result for every server, in [`Server::ALL`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct RowResult {
    pub row: Row,
    pub cells: [Summary; 3],
}

impl RowResult {
    fn get(&self, s: Server) -> &Summary {
        let i = Server::ALL.iter().position(|&x| x == s).unwrap_or(0);
        &self.cells[i]
    }

    fn ratio(&self, peer: Server) -> String {
        let t = self.get(Server::Tandem).headline(self.row.metric);
        let p = self.get(peer).headline(self.row.metric);
        if p > 0.0 {
            format!("{:.2}x", t / p)
        } else {
            "-".to_owned()
        }
    }
}

/// The main table: each server's median figure and tandem's ratio to each peer (above 1 means
/// tandem is faster).
pub fn table(results: &[RowResult]) -> String {
    let mut rows = vec![vec![
        "row".to_owned(),
        "tandem-nbd".to_owned(),
        "nbdkit".to_owned(),
        "qemu-nbd".to_owned(),
        "tandem/nbdkit".to_owned(),
        "tandem/qemu-nbd".to_owned(),
    ]];
    for r in results {
        let mut line = vec![r.row.name.to_owned()];
        line.extend(r.cells.iter().map(|c| figure(c, r.row.metric)));
        line.push(r.ratio(Server::Nbdkit));
        line.push(r.ratio(Server::QemuNbd));
        rows.push(line);
    }
    layout(&rows)
}

/// CPU use during each row: the server's and fio's, percent of one core (medians).
pub fn cpu_table(results: &[RowResult]) -> String {
    let mut rows = vec![vec!["CPU % (server / fio)".to_owned()]];
    rows[0].extend(Server::ALL.iter().map(|s| s.label().to_owned()));
    for r in results {
        let mut line = vec![r.row.name.to_owned()];
        line.extend(
            r.cells
                .iter()
                .map(|c| format!("{:.0} / {:.0}", c.server_cpu_pct, c.fio_cpu_pct)),
        );
        rows.push(line);
    }
    layout(&rows)
}

fn figure(c: &Summary, metric: Metric) -> String {
    match metric {
        Metric::Bandwidth => format!("{:.0} MiB/s", c.mib_s),
        Metric::Iops => format!("{:.0} IOPS, p50 {:.0} µs", c.iops, c.lat_p50_us),
    }
}

/// Columns padded to their widest cell: the first left-aligned, the rest right-aligned.
pub fn layout(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i == 0 {
                line.push_str(&format!("{cell:<w$}", w = width[0]));
            } else {
                line.push_str(&format!("  {cell:>w$}", w = width[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fio::ROWS;

    fn summary(mib_s: f64, iops: f64, lat: f64) -> Summary {
        Summary {
            mib_s,
            iops,
            lat_p50_us: lat,
            fio_cpu_pct: 40.0,
            server_cpu_pct: 85.4,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn summary_takes_medians_per_field() {
        let m = |bw: f64, lat: f64| Measure {
            sample: Sample {
                bw_bytes: bw * 1048576.0,
                iops: bw,
                lat_p50_us: lat,
                cpu_pct: 10.0,
            },
            server_cpu_pct: 50.0,
        };
        let s = Summary::of(&[m(100.0, 9.0), m(300.0, 1.0), m(200.0, 5.0)]).expect("some");
        assert_eq!((s.mib_s, s.iops, s.lat_p50_us), (200.0, 200.0, 5.0));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn formats_table() {
        let results = [
            RowResult {
                row: ROWS[0],
                cells: [
                    summary(900.0, 900.0, 8000.0),
                    summary(1200.0, 1200.0, 6000.0),
                    summary(450.0, 450.0, 16000.0),
                ],
            },
            RowResult {
                row: ROWS[4],
                cells: [
                    summary(86.0, 22000.0, 1011.7),
                    summary(166.0, 42500.0, 387.1),
                    summary(0.0, 0.0, 0.0),
                ],
            },
        ];
        let expected = "\
row                             tandem-nbd                  nbdkit          qemu-nbd  tandem/nbdkit  tandem/qemu-nbd
seq write 1M QD8                 900 MiB/s              1200 MiB/s         450 MiB/s          0.75x            2.00x
rand read 4k QD32  22000 IOPS, p50 1012 µs  42500 IOPS, p50 387 µs  0 IOPS, p50 0 µs          0.52x                -
";
        assert_eq!(table(&results), expected);
        let cpu = "\
CPU % (server / fio)  tandem-nbd   nbdkit  qemu-nbd
seq write 1M QD8         85 / 40  85 / 40   85 / 40
rand read 4k QD32        85 / 40  85 / 40   85 / 40
";
        assert_eq!(cpu_table(&results), cpu);
    }
}
