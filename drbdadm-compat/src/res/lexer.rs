//! Tokenizer for the drbd.conf language, matching drbd-utils' 8.4 flex scanner token for token.
//!
//! The scanner picks the longest match at each position and, on a tie, the rule listed first,
//! exactly as flex does; the numeric token codes are drbdadm-84's, because its syntax errors print
//! them (`(TK 277)`).

/// Numeric token codes (drbdadm-84's `enum yytokentype`); single characters are their ASCII code,
/// end of input is 0.
pub mod tk {
    pub const EOF: u32 = 0;
    pub const GLOBAL: u32 = 258;
    pub const RESOURCE: u32 = 259;
    pub const ON: u32 = 260;
    pub const STACKED: u32 = 261;
    pub const IGNORE: u32 = 262;
    pub const NET: u32 = 263;
    pub const DISK: u32 = 264;
    pub const SKIP: u32 = 265;
    pub const SYNCER: u32 = 266;
    pub const STARTUP: u32 = 267;
    pub const DISABLE_IP_VERIFICATION: u32 = 268;
    pub const DIALOG_REFRESH: u32 = 269;
    pub const HANDLER: u32 = 271;
    pub const COMMON: u32 = 272;
    pub const ADDRESS: u32 = 273;
    pub const ALT_ADDRESS: u32 = 274;
    pub const DEVICE: u32 = 275;
    pub const MINOR: u32 = 276;
    pub const META_DISK: u32 = 277;
    pub const FLEX_META_DISK: u32 = 278;
    pub const MINOR_COUNT: u32 = 279;
    pub const IPADDR: u32 = 280;
    pub const INTEGER: u32 = 281;
    pub const STRING: u32 = 282;
    pub const ELSE: u32 = 283;
    pub const DISK_FLAG: u32 = 284;
    pub const DISK_NO_FLAG: u32 = 285;
    pub const DISK_OPTION: u32 = 286;
    pub const NET_FLAG: u32 = 287;
    pub const NET_NO_FLAG: u32 = 288;
    pub const NET_OPTION: u32 = 289;
    pub const STARTUP_FLAG: u32 = 292;
    pub const STARTUP_OPTION: u32 = 293;
    pub const STARTUP_DELEGATE: u32 = 294;
    pub const HANDLER_OPTION: u32 = 295;
    pub const USAGE_COUNT: u32 = 296;
    pub const ASK: u32 = 297;
    pub const YES: u32 = 298;
    pub const NO: u32 = 299;
    pub const THIS_HOST: u32 = 300;
    pub const REMOTE_HOST: u32 = 301;
    pub const PROXY: u32 = 302;
    pub const INSIDE: u32 = 303;
    pub const OUTSIDE: u32 = 304;
    pub const PROXY_OPTION: u32 = 306;
    pub const PROXY_DELEGATE: u32 = 307;
    pub const ERR_STRING_TOO_LONG: u32 = 308;
    pub const ERR_DQSTRING_TOO_LONG: u32 = 309;
    pub const ERR_DQSTRING: u32 = 310;
    pub const SCI: u32 = 311;
    pub const SDP: u32 = 312;
    pub const SSOCKS: u32 = 313;
    pub const IPV4: u32 = 314;
    pub const IPV6: u32 = 315;
    pub const IPADDR6: u32 = 316;
    pub const NET_DELEGATE: u32 = 317;
    pub const INCLUDE: u32 = 318;
    pub const FLOATING: u32 = 320;
    pub const DEPRECATED_OPTION: u32 = 321;
    pub const VOLUME: u32 = 322;
    pub const CMD_TIMEOUT_SHORT: u32 = 323;
    pub const CMD_TIMEOUT_MEDIUM: u32 = 324;
    pub const CMD_TIMEOUT_LONG: u32 = 325;
    pub const RES_OPTION: u32 = 326;
    pub const OPTIONS: u32 = 327;
    pub const UDEV_ALWAYS_USE_VNR: u32 = 328;

    /// Group bit: the option was valid in the 8.3 `syncer` section.
    pub const SYNCER_OLD_OPT: u32 = 0x2000;
    /// Group bits given to the options drbd-proxy also understands.
    pub const PROXY_GROUP: u32 = 0x3000;

    /// The token without its group bits.
    pub fn base(code: u32) -> u32 {
        code & 0xfff
    }

    /// The group bits of a token.
    pub fn group(code: u32) -> u32 {
        code & !0xfff
    }
}

/// Which range check drbdadm applies to an option's value (`enum range_checks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rc {
    NoCheck,
    DiskSize,
    Timeout,
    ConnectInt,
    PingInt,
    MaxBuffers,
    MaxEpochSize,
    SndbufSize,
    RcvbufSize,
    KoCount,
    Rate,
    AlExtents,
    WfcTimeout,
    DegrWfcTimeout,
    OutdatedWfcTimeout,
    CPlanAhead,
    CDelayTarget,
    CFillTarget,
    CMaxRate,
    CMinRate,
    CongFill,
    CongExtents,
    Protocol,
}

/// One token: its code, its raw text (`yytext`), its value if the scanner stores one
/// (`yylval.txt`; quoted strings arrive unescaped) and the range check of an option keyword.
#[derive(Debug, Clone)]
pub struct Token {
    pub code: u32,
    pub text: String,
    pub value: Option<String>,
    pub rc: Option<Rc>,
}

/// How a keyword's token carries a value: `Cp` stores the text as the value.
#[derive(Clone, Copy)]
enum Kw {
    Plain(u32),
    Cp(u32),
    CpRc(u32, Rc),
}

const KEYWORDS: &[(&str, Kw)] = {
    use tk::*;
    use Kw::*;
    &[
        ("on", Plain(ON)),
        ("ignore-on", Plain(IGNORE)),
        ("stacked-on-top-of", Plain(STACKED)),
        ("floating", Plain(FLOATING)),
        ("no", Plain(NO)),
        ("net", Plain(NET)),
        ("yes", Plain(YES)),
        ("ask", Plain(ASK)),
        ("skip", Plain(SKIP)),
        ("disk", Plain(DISK)),
        ("proxy", Plain(PROXY)),
        ("minor", Plain(MINOR)),
        ("inside", Plain(INSIDE)),
        ("volume", Plain(VOLUME)),
        ("cmd-timeout-short", Plain(CMD_TIMEOUT_SHORT)),
        ("cmd-timeout-medium", Plain(CMD_TIMEOUT_MEDIUM)),
        ("cmd-timeout-long", Plain(CMD_TIMEOUT_LONG)),
        ("syncer", Plain(SYNCER)),
        ("device", Plain(DEVICE)),
        ("global", Plain(GLOBAL)),
        ("common", Plain(COMMON)),
        ("options", Plain(OPTIONS)),
        ("outside", Plain(OUTSIDE)),
        ("address", Plain(ADDRESS)),
        ("alternate-link-address", Plain(ALT_ADDRESS)),
        ("startup", Plain(STARTUP)),
        ("include", Plain(INCLUDE)),
        ("handlers", Plain(HANDLER)),
        ("minor-count", Plain(MINOR_COUNT)),
        ("disable-ip-verification", Plain(DISABLE_IP_VERIFICATION)),
        ("udev-always-use-vnr", Plain(UDEV_ALWAYS_USE_VNR)),
        ("dialog-refresh", Plain(DIALOG_REFRESH)),
        ("resource", Plain(RESOURCE)),
        ("meta-disk", Plain(META_DISK)),
        ("flexible-meta-disk", Plain(FLEX_META_DISK)),
        ("usage-count", Plain(USAGE_COUNT)),
        ("_this_host", Plain(THIS_HOST)),
        ("_remote_host", Plain(REMOTE_HOST)),
        ("sci", Cp(SCI)),
        ("ssocks", Cp(SSOCKS)),
        ("sdp", Cp(SDP)),
        ("ipv4", Cp(IPV4)),
        ("ipv6", Cp(IPV6)),
        ("size", CpRc(DISK_OPTION, Rc::DiskSize)),
        ("on-io-error", Cp(DISK_OPTION)),
        ("fencing", Cp(DISK_OPTION)),
        ("max-bio-bvecs", Cp(DISK_OPTION)),
        ("disk-timeout", Cp(DISK_OPTION)),
        ("read-balancing", Cp(DISK_OPTION)),
        ("rs-discard-granularity", Cp(DISK_OPTION)),
        ("disable-write-same", Cp(DISK_FLAG)),
        ("use-bmbv", Cp(DISK_FLAG)),
        ("disk-barrier", Cp(DISK_FLAG)),
        ("disk-flushes", Cp(DISK_FLAG)),
        ("disk-drain", Cp(DISK_FLAG)),
        ("md-flushes", Cp(DISK_FLAG)),
        ("no-disk-barrier", Cp(DISK_NO_FLAG)),
        ("no-disk-flushes", Cp(DISK_NO_FLAG)),
        ("no-disk-drain", Cp(DISK_NO_FLAG)),
        ("no-md-flushes", Cp(DISK_NO_FLAG)),
        ("timeout", CpRc(NET_OPTION, Rc::Timeout)),
        ("protocol", CpRc(NET_OPTION, Rc::Protocol)),
        ("ko-count", CpRc(NET_OPTION, Rc::KoCount)),
        ("ping-int", CpRc(NET_OPTION, Rc::PingInt)),
        ("max-buffers", CpRc(NET_OPTION, Rc::MaxBuffers)),
        (
            "sndbuf-size",
            CpRc(NET_OPTION | PROXY_GROUP, Rc::SndbufSize),
        ),
        (
            "rcvbuf-size",
            CpRc(NET_OPTION | PROXY_GROUP, Rc::RcvbufSize),
        ),
        ("connect-int", CpRc(NET_OPTION, Rc::ConnectInt)),
        ("cram-hmac-alg", Cp(NET_OPTION)),
        ("shared-secret", Cp(NET_OPTION)),
        ("max-epoch-size", CpRc(NET_OPTION, Rc::MaxEpochSize)),
        ("after-sb-0pri", Cp(NET_OPTION)),
        ("after-sb-1pri", Cp(NET_OPTION)),
        ("after-sb-2pri", Cp(NET_OPTION)),
        ("rr-conflict", Cp(NET_OPTION)),
        ("ping-timeout", Cp(NET_OPTION | PROXY_GROUP)),
        ("unplug-watermark", Cp(NET_OPTION)),
        ("data-integrity-alg", Cp(NET_OPTION)),
        ("on-congestion", Cp(NET_OPTION)),
        ("socket-check-timeout", Cp(NET_OPTION)),
        ("congestion-fill", CpRc(NET_OPTION, Rc::CongFill)),
        ("congestion-extents", CpRc(NET_OPTION, Rc::CongExtents)),
        ("allow-two-primaries", Cp(NET_FLAG)),
        ("always-asbp", Cp(NET_FLAG)),
        ("no-tcp-cork", Cp(NET_NO_FLAG)),
        ("tcp-cork", Cp(NET_FLAG)),
        ("discard-my-data", Cp(NET_DELEGATE)),
        ("rate", CpRc(SYNCER_OLD_OPT | DISK_OPTION, Rc::Rate)),
        ("resync-rate", CpRc(DISK_OPTION, Rc::Rate)),
        ("after", Cp(SYNCER_OLD_OPT | DISK_OPTION)),
        ("resync-after", Cp(DISK_OPTION)),
        ("verify-alg", Cp(SYNCER_OLD_OPT | NET_OPTION)),
        ("csums-alg", Cp(SYNCER_OLD_OPT | NET_OPTION)),
        ("csums-after-crash-only", Cp(NET_FLAG)),
        (
            "al-extents",
            CpRc(SYNCER_OLD_OPT | DISK_OPTION, Rc::AlExtents),
        ),
        ("al-updates", Cp(DISK_FLAG)),
        ("discard-zeroes-if-aligned", Cp(DISK_FLAG)),
        ("cpu-mask", Cp(SYNCER_OLD_OPT | RES_OPTION)),
        ("use-rle", Cp(SYNCER_OLD_OPT | NET_FLAG)),
        ("delay-probe-volume", Cp(DEPRECATED_OPTION)),
        ("delay-probe-interval", Cp(DEPRECATED_OPTION)),
        (
            "c-plan-ahead",
            CpRc(SYNCER_OLD_OPT | DISK_OPTION, Rc::CPlanAhead),
        ),
        (
            "c-delay-target",
            CpRc(SYNCER_OLD_OPT | DISK_OPTION, Rc::CDelayTarget),
        ),
        (
            "c-fill-target",
            CpRc(SYNCER_OLD_OPT | DISK_OPTION, Rc::CFillTarget),
        ),
        (
            "c-max-rate",
            CpRc(SYNCER_OLD_OPT | DISK_OPTION, Rc::CMaxRate),
        ),
        (
            "c-min-rate",
            CpRc(SYNCER_OLD_OPT | DISK_OPTION, Rc::CMinRate),
        ),
        ("throttle-threshold", Cp(DEPRECATED_OPTION)),
        ("hold-off-threshold", Cp(DEPRECATED_OPTION)),
        ("on-no-data-accessible", Cp(SYNCER_OLD_OPT | RES_OPTION)),
        ("wfc-timeout", CpRc(STARTUP_OPTION, Rc::WfcTimeout)),
        ("degr-wfc-timeout", CpRc(STARTUP_OPTION, Rc::DegrWfcTimeout)),
        (
            "outdated-wfc-timeout",
            CpRc(STARTUP_OPTION, Rc::OutdatedWfcTimeout),
        ),
        ("stacked-timeouts", Plain(STARTUP_DELEGATE)),
        ("become-primary-on", Plain(STARTUP_DELEGATE)),
        ("wait-after-sb", Cp(STARTUP_FLAG)),
        ("pri-on-incon-degr", Cp(HANDLER_OPTION)),
        ("pri-lost-after-sb", Cp(HANDLER_OPTION)),
        ("pri-lost", Cp(HANDLER_OPTION)),
        ("initial-split-brain", Cp(HANDLER_OPTION)),
        ("split-brain", Cp(HANDLER_OPTION)),
        ("outdate-peer", Cp(HANDLER_OPTION)),
        ("fence-peer", Cp(HANDLER_OPTION)),
        ("unfence-peer", Cp(HANDLER_OPTION)),
        ("local-io-error", Cp(HANDLER_OPTION)),
        ("before-resync-target", Cp(HANDLER_OPTION)),
        ("after-resync-target", Cp(HANDLER_OPTION)),
        ("before-resync-source", Cp(HANDLER_OPTION)),
        ("memlimit", Cp(PROXY_OPTION | PROXY_GROUP)),
        ("read-loops", Cp(PROXY_OPTION | PROXY_GROUP)),
        ("compression", Cp(PROXY_OPTION | PROXY_GROUP)),
        ("bwlimit", Cp(PROXY_OPTION | PROXY_GROUP)),
        ("plugin", Cp(PROXY_DELEGATE)),
        ("out-of-sync", Cp(HANDLER_OPTION)),
    ]
};

/// Sorted, deduplicated set of byte offsets where a partial match may end.
type Ends = Vec<usize>;

fn norm(mut v: Ends) -> Ends {
    v.sort_unstable();
    v.dedup();
    v
}

/// Advance every position over one byte accepted by `f`.
fn class(s: &[u8], from: &[usize], f: impl Fn(u8) -> bool) -> Ends {
    from.iter()
        .filter(|&&p| p < s.len() && f(s[p]))
        .map(|&p| p + 1)
        .collect()
}

/// Apply `item` between `min` and `max` times, collecting every reachable end.
fn rep(from: &[usize], min: usize, max: usize, item: &dyn Fn(&[usize]) -> Ends) -> Ends {
    let mut out = Vec::new();
    let mut cur: Ends = from.to_vec();
    for k in 0..=max {
        if k >= min {
            out.extend_from_slice(&cur);
        }
        if k == max || cur.is_empty() {
            break;
        }
        cur = norm(item(&cur));
    }
    norm(out)
}

fn opt(from: &[usize], item: &dyn Fn(&[usize]) -> Ends) -> Ends {
    rep(from, 0, 1, item)
}

fn is_string_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'/' | b'.' | b'_' | b'-')
}

fn lit(s: &[u8], from: &[usize], c: u8) -> Ends {
    class(s, from, |b| b == c)
}

fn hex4(s: &[u8], from: &[usize]) -> Ends {
    rep(from, 1, 4, &|f| class(s, f, |b| b.is_ascii_hexdigit()))
}

fn ipv4(s: &[u8], from: &[usize]) -> Ends {
    let snumb = |f: &[usize]| rep(f, 1, 3, &|g| class(s, g, |b| b.is_ascii_digit()));
    let group = |f: &[usize]| lit(s, &snumb(f), b'.');
    snumb(&rep(from, 3, 3, &group))
}

fn ipv6(s: &[u8], p: usize) -> Ends {
    let from = [p];
    // (((HEX4 ":"){0,5} HEX4)? ":" HEX4? ":" (HEX4 (":" HEX4){0,5})? ("%" STRING)?)
    let a = {
        let pre = opt(&from, &|f| {
            let r = rep(f, 0, 5, &|g| lit(s, &hex4(s, g), b':'));
            hex4(s, &r)
        });
        let c1 = lit(s, &pre, b':');
        let h = opt(&c1, &|f| hex4(s, f));
        let c2 = lit(s, &h, b':');
        let tail = opt(&c2, &|f| {
            let first = hex4(s, f);
            rep(&first, 0, 5, &|g| hex4(s, &lit(s, g, b':')))
        });
        opt(&tail, &|f| {
            let pct = lit(s, f, b'%');
            rep(&pct, 1, 128, &|g| class(s, g, is_string_char))
        })
    };
    // "::" [fF]{4} ":" IPV4ADDR
    let b = {
        let c = lit(s, &lit(s, &from, b':'), b':');
        let f4 = rep(&c, 4, 4, &|g| class(s, g, |x| x == b'f' || x == b'F'));
        ipv4(s, &lit(s, &f4, b':'))
    };
    let mut all = a;
    all.extend(b);
    norm(all)
}

/// One character of a double-quoted string body: anything but quote, backslash and newline, or
/// a backslash followed by anything but a newline.
fn dq_item(s: &[u8], from: &[usize]) -> Ends {
    let mut out = class(s, from, |b| b != b'"' && b != b'\\' && b != b'\n');
    let esc = lit(s, from, b'\\');
    out.extend(class(s, &esc, |b| b != b'\n'));
    norm(out)
}

fn longest(v: &[usize], p: usize) -> usize {
    v.last().map_or(0, |&e| e - p)
}

/// Undo the escapes of a double-quoted string: drop unescaped quotes, keep the byte after a
/// backslash as it is (no C escapes).
pub fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c == b'"' {
            i += 1;
            continue;
        }
        if c == b'\\' {
            i += 1;
            if i >= raw.len() {
                break;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// A scanner over one file's bytes; it counts lines the way flex's rule for `\n` does.
pub struct Lexer {
    src: Vec<u8>,
    pos: usize,
    /// The current line (1-based), i.e. drbdadm's `line`.
    pub line: u32,
}

impl Lexer {
    /// Scans `src` from its beginning, at line 1.
    pub fn new(src: Vec<u8>) -> Self {
        Lexer {
            src,
            pos: 0,
            line: 1,
        }
    }

    /// The next token; at the end of input, `tk::EOF` with empty text, forever.
    pub fn next_token(&mut self) -> Token {
        loop {
            let s = &self.src[..];
            let p = self.pos;
            if p >= s.len() {
                return Token {
                    code: tk::EOF,
                    text: String::new(),
                    value: None,
                    rc: None,
                };
            }
            let c = s[p];
            if c == b'\n' {
                self.line += 1;
                self.pos += 1;
                continue;
            }
            if c == b'#' {
                let len = s[p..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(s.len() - p);
                self.pos += len;
                continue;
            }
            if matches!(c, b' ' | b'\t' | b'\r') {
                self.pos += 1;
                continue;
            }
            if matches!(c, b'{' | b'}' | b';' | b'[' | b']' | b':') {
                self.pos += 1;
                return Token {
                    code: u32::from(c),
                    text: (c as char).to_string(),
                    value: None,
                    rc: None,
                };
            }
            return self.scan_word(p);
        }
    }

    fn scan_word(&mut self, p: usize) -> Token {
        let s = &self.src[..];
        let from = [p];
        // Candidates in flex rule order: (length, rule index).
        let mut best_len = 0usize;
        let mut best_rule = usize::MAX;
        let mut consider = |len: usize, rule: usize| {
            if len > best_len {
                best_len = len;
                best_rule = rule;
            }
        };
        // Keywords (rules 0..KEYWORDS.len()).
        for (i, (kw, _)) in KEYWORDS.iter().enumerate() {
            if s[p..].starts_with(kw.as_bytes()) {
                consider(kw.len(), i);
            }
        }
        let base = KEYWORDS.len();
        consider(longest(&ipv4(s, &from), p), base);
        consider(longest(&ipv6(s, p), p), base + 1);
        let num = {
            let d = rep(&from, 1, 8, &|g| class(s, g, |b| b.is_ascii_digit()));
            let mut all = d.clone();
            all.extend(class(s, &d, |b| matches!(b, b'M' | b'K' | b'G' | b's')));
            norm(all)
        };
        consider(longest(&num, p), base + 2);
        let q = lit(s, &from, b'"');
        let body = rep(&q, 0, 255, &|g| dq_item(s, g));
        consider(longest(&lit(s, &body, b'"'), p), base + 3);
        let run = s[p..]
            .iter()
            .take(129)
            .take_while(|&&b| is_string_char(b))
            .count();
        consider(run.min(128), base + 4);
        if run == 129 {
            consider(129, base + 5);
        }
        let body255 = rep(&q, 255, 255, &|g| dq_item(s, g));
        consider(longest(&class(s, &body255, |b| b != b'\n'), p), base + 6);
        consider(
            longest(&class(s, &body, |b| b == b'\\' || b == b'\n'), p),
            base + 7,
        );
        if best_len == 0 {
            best_len = 1;
            best_rule = base + 8;
        }
        let raw = &s[p..p + best_len];
        let text = String::from_utf8_lossy(raw).into_owned();
        self.pos = p + best_len;
        let plain = |code: u32, text: String| Token {
            code,
            text,
            value: None,
            rc: None,
        };
        if best_rule < base {
            let (_, kw) = KEYWORDS[best_rule];
            return match kw {
                Kw::Plain(code) => plain(code, text),
                Kw::Cp(code) => Token {
                    code,
                    value: Some(text.clone()),
                    text,
                    rc: Some(Rc::NoCheck),
                },
                Kw::CpRc(code, rc) => Token {
                    code,
                    value: Some(text.clone()),
                    text,
                    rc: Some(rc),
                },
            };
        }
        let cp = |code: u32, text: String, value: String| Token {
            code,
            text,
            value: Some(value),
            rc: Some(Rc::NoCheck),
        };
        match best_rule - base {
            0 => cp(tk::IPADDR, text.clone(), text),
            1 => cp(tk::IPADDR6, text.clone(), text),
            2 => cp(tk::INTEGER, text.clone(), text),
            3 => {
                let v = String::from_utf8_lossy(&unescape(raw)).into_owned();
                cp(tk::STRING, text, v)
            }
            4 => cp(tk::STRING, text.clone(), text),
            5 => plain(tk::ERR_STRING_TOO_LONG, text),
            6 => plain(tk::ERR_DQSTRING_TOO_LONG, text),
            // A newline ending this token is not counted, as in flex.
            7 => plain(tk::ERR_DQSTRING, text),
            _ => plain(tk::ELSE, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(src: &str) -> Vec<(u32, String)> {
        let mut l = Lexer::new(src.as_bytes().to_vec());
        let mut out = Vec::new();
        loop {
            let t = l.next_token();
            if t.code == tk::EOF {
                return out;
            }
            out.push((t.code, t.value.unwrap_or(t.text)));
        }
    }

    #[test]
    fn keywords_win_ties_and_longer_words_win() {
        let c = codes("on onx on-io-error disk disk-flushes net");
        assert_eq!(c[0].0, tk::ON);
        assert_eq!(c[1].0, tk::STRING);
        assert_eq!(c[2].0, tk::DISK_OPTION);
        assert_eq!(c[3].0, tk::DISK);
        assert_eq!(c[4].0, tk::DISK_FLAG);
        assert_eq!(c[5].0, tk::NET);
    }

    #[test]
    fn addresses_numbers_and_strings() {
        let c = codes("192.168.2.71:7789 [fd00:10::1]:7795 100M 123456789 1.2.3.4567");
        let k: Vec<u32> = c.iter().map(|x| x.0).collect();
        assert_eq!(
            k,
            vec![
                tk::IPADDR,
                58,
                tk::INTEGER,
                91,
                tk::IPADDR6,
                93,
                58,
                tk::INTEGER,
                tk::INTEGER,
                tk::STRING,
                tk::STRING
            ]
        );
    }

    #[test]
    fn quoted_strings_unescape_and_errors() {
        let c = codes(r#""a \"b\" \\c" "x"#);
        assert_eq!(c[0], (tk::STRING, r#"a "b" \c"#.to_string()));
        assert_eq!(c[1].0, tk::ELSE);
        let long = format!("\"{}\"", "a".repeat(256));
        assert_eq!(codes(&long)[0].0, tk::ERR_DQSTRING_TOO_LONG);
        assert_eq!(codes(&"b".repeat(200))[0].0, tk::ERR_STRING_TOO_LONG);
        assert_eq!(codes("\"abc\ndef\"")[0].0, tk::ERR_DQSTRING);
    }

    #[test]
    fn lines_and_comments() {
        let mut l = Lexer::new(b"# c\n\n x # y\n z".to_vec());
        let t = l.next_token();
        assert_eq!((t.text.as_str(), l.line), ("x", 3));
        let t = l.next_token();
        assert_eq!((t.text.as_str(), l.line), ("z", 4));
    }
}
