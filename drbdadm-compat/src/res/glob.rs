//! POSIX `glob(3)` for `include` patterns, relative to the including file's directory: `*`, `?`,
//! `[...]`, backslash escapes, no match for a leading dot unless written, results sorted.

use std::path::Path;

/// `fnmatch(3)` without flags, except that a leading `.` must be matched literally.
pub fn fnmatch(pat: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pat.first() != Some(&b'.') {
        return false;
    }
    matches(pat, name)
}

/// Wildcard matching with a single backtracking point (linear in practice, never exponential).
fn matches(p: &[u8], n: &[u8]) -> bool {
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            // Try to consume one pattern element against n[ni].
            let step = match p[pi] {
                b'*' => {
                    star = Some((pi + 1, ni));
                    pi += 1;
                    continue;
                }
                b'?' => (ni < n.len()).then_some(1),
                b'[' => match bracket(&p[pi..], n.get(ni).copied().unwrap_or(0)) {
                    Some((ok, used)) => (ok && ni < n.len()).then_some(used),
                    None => (n.get(ni) == Some(&b'[')).then_some(1),
                },
                b'\\' if pi + 1 < p.len() => (n.get(ni) == Some(&p[pi + 1])).then_some(2),
                c => (n.get(ni) == Some(&c)).then_some(1),
            };
            if let Some(used) = step {
                pi += used;
                ni += 1;
                continue;
            }
        } else if ni == n.len() {
            return true;
        }
        // Mismatch: let the last `*` swallow one more byte.
        match star {
            Some((sp, sn)) if sn < n.len() => {
                star = Some((sp, sn + 1));
                pi = sp;
                ni = sn + 1;
            }
            _ => return false,
        }
    }
}

/// Matches `c` against the bracket expression at the start of `p`; returns (matched, length).
fn bracket(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let neg = i < p.len() && (p[i] == b'!' || p[i] == b'^');
    if neg {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((hit != neg, i + 1));
        }
        first = false;
        let mut lo = p[i];
        if lo == b'\\' && i + 1 < p.len() {
            i += 1;
            lo = p[i];
        }
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let hi = p[i + 2];
            if lo <= c && c <= hi {
                hit = true;
            }
            i += 3;
        } else {
            if lo == c {
                hit = true;
            }
            i += 1;
        }
    }
    None
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expands `pattern` against the file system; relative patterns are taken from `dir` and returned
/// relative (as glob run in that directory would print them).
pub fn glob(dir: &Path, pattern: &str) -> Vec<String> {
    let absolute = pattern.starts_with('/');
    let comps: Vec<&str> = pattern.split('/').collect();
    // Each candidate: (path as printed, path on disk).
    let mut cands: Vec<(String, std::path::PathBuf)> = if absolute {
        vec![(String::new(), std::path::PathBuf::from("/"))]
    } else {
        vec![(String::new(), dir.to_path_buf())]
    };
    let n = comps.len();
    for (idx, comp) in comps.iter().enumerate() {
        if idx == 0 && absolute {
            continue;
        }
        let last = idx + 1 == n;
        let mut next = Vec::new();
        for (shown, disk) in &cands {
            let join = |name: &str| {
                let s = if shown.is_empty() && !absolute {
                    name.to_string()
                } else if shown.is_empty() {
                    format!("/{name}")
                } else {
                    format!("{shown}/{name}")
                };
                (s, disk.join(name))
            };
            if comp.is_empty() {
                // Repeated or trailing slash.
                next.push((format!("{shown}/"), disk.clone()));
                continue;
            }
            if !has_meta(comp) {
                let lit = unescape(comp);
                next.push(join(&lit));
                continue;
            }
            let Ok(rd) = std::fs::read_dir(disk) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|nm| fnmatch(comp.as_bytes(), nm.as_bytes()))
                .collect();
            names.sort();
            for nm in names {
                let (s, d) = join(&nm);
                if !last && !d.is_dir() {
                    continue;
                }
                next.push((s, d));
            }
        }
        cands = next;
    }
    let mut out: Vec<String> = cands
        .into_iter()
        .filter(|(_, d)| std::fs::symlink_metadata(d).is_ok())
        .map(|(s, _)| s)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(fnmatch(b"*.res", b"a.res"));
        assert!(!fnmatch(b"*.res", b".a.res"));
        assert!(fnmatch(b".*", b".a"));
        assert!(fnmatch(b"[ab]?.conf", b"b1.conf"));
        assert!(!fnmatch(b"[!ab]*", b"a"));
        assert!(fnmatch(b"r[0-9]", b"r5"));
        assert!(fnmatch(b"a\\*", b"a*"));
    }
}
