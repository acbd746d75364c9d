//! Recursive-descent parser for drbd.conf with drbdadm-84's checks and error messages.
//!
//! Errors that make drbdadm-84 stop at once are returned as [`ParseError`]; the ones after which
//! it keeps parsing (and exits 10 at the end) are collected in [`Session::diagnostics`] and clear
//! [`Session::valid`]. A few DRBD 9 forms (`node-id`, `connection`, `net { fencing }`) are
//! accepted as well, so that two-node DRBD 9 resources load into the same model.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::ast::{Address, Config, Connection, Host, Opt, Proxy, Resource, UsageCount, Volume};
use super::glob;
use super::lexer::{tk, Lexer, Rc, Token};
use super::units::{atoi, strtoll, NumError, Unit};

/// drbdadm's exit code for an invalid configuration.
pub const E_CONFIG_INVALID: i32 = 10;
/// drbdadm's exit code for a usage error.
pub const E_USAGE: i32 = 1;
/// drbdadm's exit code for a failed conversion or system call.
pub const E_EXEC_ERROR: i32 = 20;

/// Deepest include nesting accepted; drbdadm-84 reads each file once, this also bounds chains.
pub const MAX_INCLUDE_DEPTH: usize = 64;

/// A fatal configuration error: drbdadm-84 prints `message` and exits with `exit_code`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ParseError {
    /// The file as drbdadm names it in messages (relative to the including file for includes).
    pub file: String,
    pub line: u32,
    /// The complete text drbdadm prints, with its trailing newline.
    pub message: String,
    pub exit_code: i32,
}

/// A non-fatal message (warning or error after which parsing goes on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub message: String,
}

type PResult<T> = Result<T, ParseError>;

/// Parse state that outlives the parse: uniqueness tables, the validity flag and messages, used
/// again by the checks after parsing.
#[derive(Debug, Default)]
pub struct Session {
    /// Messages in the order drbdadm prints them.
    pub diagnostics: Vec<Diagnostic>,
    /// False once any non-fatal error was reported.
    pub valid: bool,
    /// Global uniqueness table: key -> `file:line` of first use.
    pub uniq: HashMap<String, String>,
    /// The file being read, as named in messages.
    pub file: String,
    /// Absolute path of the file being read.
    pub save: String,
    /// Line of the statement being parsed (drbdadm's `fline`).
    pub fline: u32,
    /// Whether stdin or stdout is not a terminal (drbdadm's `no_tty`).
    pub no_tty: bool,
}

impl Session {
    /// Records a non-fatal error and marks the configuration invalid.
    pub fn error(&mut self, line: u32, message: String) {
        self.valid = false;
        self.warn(line, message);
    }

    /// Records a message without affecting validity.
    pub fn warn(&mut self, line: u32, message: String) {
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            line,
            message,
        });
    }

    /// A fatal error at `line` of the current file.
    pub fn fatal(&self, line: u32, message: String, exit_code: i32) -> ParseError {
        ParseError {
            file: self.file.clone(),
            line,
            message,
            exit_code,
        }
    }

    /// drbdadm's `check_uniq`: the first use of `key` is remembered, a second one is fatal.
    pub fn check_uniq(&mut self, what: &str, key: String) -> PResult<()> {
        let here = format!("{}:{}", self.file, self.fline);
        if let Some(first) = self.uniq.get(&key) {
            let msg = format!(
                "{here}: conflicting use of {what} '{key}' ...\n{first}: {what} '{key}' first used here.\n"
            );
            return Err(self.fatal(self.fline, msg, E_CONFIG_INVALID));
        }
        self.uniq.insert(key, here);
        Ok(())
    }

    /// drbdadm's range check of a numeric option value.
    pub fn range_check(&mut self, rc: Rc, name: &str, value: &mut String) -> PResult<()> {
        let (unit, min, max) = match rc {
            Rc::NoCheck | Rc::AlExtents => return Ok(()),
            Rc::Protocol => {
                let b = value.as_bytes();
                let ok = b.len() == 1 && matches!(b[0] & !0x20, b'A' | b'B' | b'C');
                if ok {
                    *value = value.to_ascii_uppercase();
                } else {
                    self.error(
                        self.fline,
                        format!("unknown protocol '{value}', should be one of A,B,C\n"),
                    );
                }
                return Ok(());
            }
            _ => limits(rc),
        };
        self.strtoll_range(value, unit, name, min, max)
    }

    /// `m_strtoll_range`: reports values outside `[min..max]` in the option's unit.
    pub fn strtoll_range(
        &mut self,
        value: &str,
        unit: Unit,
        name: &str,
        min: u64,
        max: u64,
    ) -> PResult<()> {
        let r = match strtoll(value, unit) {
            Ok(r) => r,
            Err(e) => {
                let code = if e == NumError::Missing {
                    100
                } else {
                    E_EXEC_ERROR
                };
                return Err(self.fatal(self.fline, format!("{e}\n"), code));
            }
        };
        if r < min || r > max {
            let u = unit.suffix();
            self.error(
                self.fline,
                format!(
                    "{}:{}: {name} {value} => {r}{u} out of range [{min}..{max}]{u}.\n",
                    self.file, self.fline
                ),
            );
        }
        Ok(())
    }
}

/// Unit and inclusive range of a range-checked option (drbd-utils' v84 `drbd_limits.h`).
pub fn limits(rc: Rc) -> (Unit, u64, u64) {
    use Unit::*;
    match rc {
        Rc::DiskSize => (Sectors, 0, 2 << 40),
        Rc::Timeout => (One, 1, 600),
        Rc::ConnectInt => (One, 1, 120),
        Rc::PingInt => (One, 1, 120),
        Rc::MaxBuffers => (One, 32, 131072),
        Rc::MaxEpochSize => (One, 1, 20000),
        Rc::SndbufSize | Rc::RcvbufSize => (One, 0, 10 << 20),
        Rc::KoCount => (One, 0, 200),
        Rc::Rate => (Kilo, 1, 4 << 20),
        Rc::WfcTimeout | Rc::DegrWfcTimeout | Rc::OutdatedWfcTimeout => (One, 0, 300000),
        Rc::CPlanAhead => (One, 0, 300),
        Rc::CDelayTarget => (One, 1, 100),
        Rc::CFillTarget => (Sectors, 0, 1 << 20),
        Rc::CMaxRate => (Kilo, 250, 4 << 20),
        Rc::CMinRate => (Kilo, 0, 4 << 20),
        Rc::CongFill => (Sectors, 0, 10 << 21),
        Rc::CongExtents | Rc::AlExtents => (One, 67, 0xfffe),
        Rc::NoCheck | Rc::Protocol => (One, 0, u64::MAX),
    }
}

/// What a `parse_options` section may delegate to a special handler.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delegate {
    None,
    /// `net`: `discard-my-data` (refused outside `adjust`); `fencing` accepted (DRBD 9).
    Net,
    /// `startup`: `become-primary-on`, `stacked-timeouts`.
    Startup,
    /// proxy `options`: `plugin { ... }`.
    Proxy,
}

/// Side results of a delegating options section.
#[derive(Default)]
struct Extra {
    become_primary_on: Option<Vec<String>>,
    stacked_timeouts: bool,
    plugins: Option<Vec<Opt>>,
}

/// Whether a resource section is `common` (no host sections allowed).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ResKind {
    Resource,
    Common,
}

/// Inputs of a parse that come from the environment.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// The config file as named on the command line (`STDIN` for `-`).
    pub file: String,
    /// Its absolute path (drbdadm's `config_save`).
    pub save: String,
    /// Directory against which relative paths (`file`, includes) are resolved.
    pub cwd: PathBuf,
    pub no_tty: bool,
    /// Read `include`d files (off for fuzzing, where any path may appear).
    pub follow_includes: bool,
}

/// Parses one configuration, following includes.
pub struct Parser {
    lex: Lexer,
    tok: Token,
    /// drbdadm's `yylval.txt`: the value of the last token that carried one.
    value: String,
    /// drbdadm's `yylval.rc`.
    rc: Rc,
    pub session: Session,
    upr: HashMap<String, String>,
    seen: HashSet<PathBuf>,
    c_section_start: u32,
    config: Config,
    depth: usize,
    follow_includes: bool,
}

impl Parser {
    /// Reads a whole configuration from `src` (the contents of `opts.file`).
    ///
    /// Non-fatal problems are in the returned session (check [`Session::valid`]); a fatal one is
    /// the `Err`, printed after the session's messages.
    pub fn parse(src: Vec<u8>, opts: &ParseOptions) -> (Result<Config, ParseError>, Session) {
        let mut p = Parser {
            lex: Lexer::new(src),
            tok: Token {
                code: 0,
                text: String::new(),
                value: None,
                rc: None,
            },
            value: String::new(),
            rc: Rc::NoCheck,
            session: Session {
                valid: true,
                file: opts.file.clone(),
                save: opts.save.clone(),
                no_tty: opts.no_tty,
                ..Session::default()
            },
            upr: HashMap::new(),
            seen: HashSet::new(),
            c_section_start: 0,
            config: Config {
                config_file: opts.save.clone(),
                ..Config::default()
            },
            depth: 0,
            follow_includes: opts.follow_includes,
        };
        let main = opts.cwd.join(&opts.file);
        p.seen
            .insert(std::fs::canonicalize(&main).unwrap_or(main.clone()));
        let r = p.parse_top();
        (r.map(|()| p.config), p.session)
    }

    fn line(&self) -> u32 {
        self.lex.line
    }

    fn lex(&mut self) -> u32 {
        self.tok = self.lex.next_token();
        if let Some(v) = &self.tok.value {
            self.value.clone_from(v);
        }
        if let Some(rc) = self.tok.rc {
            self.rc = rc;
        }
        self.tok.code
    }

    fn got(&self) -> String {
        let t = &self.tok.text;
        if t.len() > 20 {
            let mut end = 20;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &t[..end])
        } else {
            t.clone()
        }
    }

    fn pe_expected(&self, exp: &str) -> ParseError {
        let msg = format!(
            "{}:{}: Parse error: '{exp}' expected,\n\tbut got '{}'\n",
            self.session.file,
            self.line(),
            self.got()
        );
        self.session.fatal(self.line(), msg, E_CONFIG_INVALID)
    }

    fn pe_expected_got(&self, exp: &str, got: u32) -> ParseError {
        let msg = format!(
            "{}:{}: Parse error: '{exp}' expected,\n\tbut got '{}' (TK {got})\n",
            self.session.file,
            self.line(),
            self.got()
        );
        self.session.fatal(self.line(), msg, E_CONFIG_INVALID)
    }

    fn check_string_error(&self, got: u32) -> PResult<()> {
        let msg = match got {
            tk::ERR_STRING_TOO_LONG => "Token too long",
            tk::ERR_DQSTRING_TOO_LONG => "Double quoted string too long",
            tk::ERR_DQSTRING => {
                "Unterminated double quoted string\n  we don't allow embedded newlines\n "
            }
            _ => return Ok(()),
        };
        let mut t = self.tok.text.clone();
        let mut end = t.len().min(20);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t.truncate(end);
        Err(self.session.fatal(
            self.line(),
            format!(
                "{}:{}: {msg} >>>{t}...<<<\n",
                self.session.file,
                self.line()
            ),
            E_CONFIG_INVALID,
        ))
    }

    /// drbdadm's `EXP(TOKEN)`; `name` is how the token is named in the message.
    fn exp(&mut self, want: u32, name: &str) -> PResult<()> {
        let t = self.lex();
        if t != want {
            if want == tk::STRING {
                self.check_string_error(t)?;
            }
            return Err(self.pe_expected_got(name, t));
        }
        Ok(())
    }

    fn exp_char(&mut self, c: char) -> PResult<()> {
        self.exp(c as u32, &c.to_string())
    }

    fn expect_string_or_int(&mut self) -> PResult<()> {
        let t = self.lex();
        match t {
            tk::INTEGER | tk::STRING => Ok(()),
            tk::ON => {
                self.value = self.tok.text.clone();
                Ok(())
            }
            _ => {
                self.check_string_error(t)?;
                Err(self.pe_expected_got("TK_STRING | TK_INTEGER", t))
            }
        }
    }

    fn check_upr(&mut self, what: &str, key: String) -> PResult<()> {
        let here = format!("{}:{}", self.session.file, self.session.fline);
        if let Some(first) = self.upr.get(&key) {
            let msg = format!(
                "{here}: conflicting use of {what} '{key}' ...\n{first}: {what} '{key}' first used here.\n"
            );
            return Err(self
                .session
                .fatal(self.session.fline, msg, E_CONFIG_INVALID));
        }
        self.upr.insert(key, here);
        Ok(())
    }

    fn set_fline(&mut self) {
        self.session.fline = self.line();
    }

    fn parse_top(&mut self) -> PResult<()> {
        loop {
            let t = self.lex();
            self.set_fline();
            match t {
                tk::GLOBAL => self.parse_global()?,
                tk::COMMON => {
                    self.exp_char('{')?;
                    let c = self.parse_resource("common".into(), ResKind::Common)?;
                    self.config.common = Some(c);
                }
                tk::RESOURCE => {
                    self.exp(tk::STRING, "TK_STRING")?;
                    let name = self.value.clone();
                    self.sane_res_name(&name)?;
                    self.exp_char('{')?;
                    let r = self.parse_resource(name, ResKind::Resource)?;
                    self.config.resources.push(r);
                }
                tk::SKIP => self.parse_skip()?,
                tk::INCLUDE => {
                    self.exp(tk::STRING, "TK_STRING")?;
                    self.exp_char(';')?;
                    let pat = self.value.clone();
                    self.include(&pat)?;
                }
                tk::EOF => return Ok(()),
                _ => return Err(self.pe_expected("global | common | resource | skip | include")),
            }
        }
    }

    fn sane_res_name(&self, name: &str) -> PResult<()> {
        if name.is_empty() {
            return Err(self
                .session
                .fatal(self.line(), "Resource name is empty.\n".into(), 1));
        }
        if name.bytes().any(|b| b < b' ' || b == 0x7f) {
            return Err(self.session.fatal(
                self.line(),
                "Resource name is invalid - please don't use control characters.\n".into(),
                1,
            ));
        }
        Ok(())
    }

    fn include(&mut self, pattern: &str) -> PResult<()> {
        let dir = match Path::new(&self.session.save).parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("/"),
        };
        let has_meta = pattern.contains(['?', '*', '[']);
        let matches = if self.follow_includes {
            glob::glob(&dir, pattern)
        } else {
            Vec::new()
        };
        if matches.is_empty() && !has_meta {
            let msg = format!(
                "{}:{}: Failed to open include file '{pattern}'.\n",
                self.session.file,
                self.line()
            );
            self.session.error(self.line(), msg);
        }
        for name in matches {
            let full = dir.join(&name);
            let real = std::fs::canonicalize(&full).unwrap_or(full.clone());
            if !self.seen.insert(real) {
                continue;
            }
            let data = match std::fs::read(&full) {
                Ok(d) => d,
                Err(_) => {
                    let msg = format!(
                        "{}:{}: Failed to open include file '{name}'.\n",
                        self.session.file,
                        self.line()
                    );
                    self.session.error(self.line(), msg);
                    continue;
                }
            };
            if self.depth >= MAX_INCLUDE_DEPTH {
                return Err(self.session.fatal(
                    self.line(),
                    format!(
                        "{}:{}: includes nested deeper than {MAX_INCLUDE_DEPTH} levels\n",
                        self.session.file,
                        self.line()
                    ),
                    E_CONFIG_INVALID,
                ));
            }
            let save = canonify(&dir, &name).unwrap_or_else(|| full.to_string_lossy().into());
            let old_lex = std::mem::replace(&mut self.lex, Lexer::new(data));
            let old_file = std::mem::replace(&mut self.session.file, name.clone());
            let old_save = std::mem::replace(&mut self.session.save, save);
            self.depth += 1;
            let r = self.parse_top();
            self.depth -= 1;
            self.lex = old_lex;
            self.session.file = old_file;
            self.session.save = old_save;
            r?;
        }
        Ok(())
    }

    fn parse_global(&mut self) -> PResult<()> {
        self.set_fline();
        self.session.check_uniq("global section", "global".into())?;
        if !self.config.resources.is_empty() {
            let msg = format!(
                "{}:{}: You should put the global {{}} section\n\tin front of any resource {{}} section\n",
                self.session.file,
                self.line()
            );
            self.session.warn(self.line(), msg);
        }
        self.exp_char('{')?;
        loop {
            let t = self.lex();
            self.set_fline();
            match t {
                tk::UDEV_ALWAYS_USE_VNR => self.config.global.udev_always_use_vnr = true,
                tk::DISABLE_IP_VERIFICATION => self.config.global.disable_ip_verification = true,
                tk::MINOR_COUNT => {
                    self.exp(tk::INTEGER, "TK_INTEGER")?;
                    let v = self.value.clone();
                    self.session
                        .strtoll_range(&v, Unit::One, "minor-count", 1, 255)?;
                    self.config.global.minor_count = atoi(&v);
                }
                tk::DIALOG_REFRESH => {
                    self.exp(tk::INTEGER, "TK_INTEGER")?;
                    let v = self.value.clone();
                    self.session
                        .strtoll_range(&v, Unit::One, "dialog-refresh", 0, 600)?;
                    self.config.global.dialog_refresh = atoi(&v);
                }
                tk::CMD_TIMEOUT_SHORT | tk::CMD_TIMEOUT_MEDIUM | tk::CMD_TIMEOUT_LONG => {
                    self.exp(tk::INTEGER, "TK_INTEGER")?;
                    let v = self.value.clone();
                    let name = match t {
                        tk::CMD_TIMEOUT_SHORT => "cmd-timeout-short",
                        tk::CMD_TIMEOUT_MEDIUM => "cmd-timeout-medium",
                        _ => "cmd-timeout-long",
                    };
                    self.session.strtoll_range(&v, Unit::One, name, 0, 900)?;
                    let g = &mut self.config.global;
                    match t {
                        tk::CMD_TIMEOUT_SHORT => g.cmd_timeout_short = atoi(&v),
                        tk::CMD_TIMEOUT_MEDIUM => g.cmd_timeout_medium = atoi(&v),
                        _ => g.cmd_timeout_long = atoi(&v),
                    }
                }
                tk::USAGE_COUNT => {
                    self.config.global.usage_count = match self.lex() {
                        tk::YES => UsageCount::Yes,
                        tk::NO => UsageCount::No,
                        tk::ASK => UsageCount::Ask,
                        _ => return Err(self.pe_expected("yes | no | ask")),
                    }
                }
                0x7d => return Ok(()),
                _ => {
                    return Err(
                        self.pe_expected("dialog-refresh | minor-count | disable-ip-verification")
                    )
                }
            }
            self.exp_char(';')?;
        }
    }

    fn alias(name: &mut String, token: u32) {
        let new = match (token, name.as_str()) {
            (tk::HANDLER_OPTION, "outdate-peer") => "fence-peer",
            (tk::DISK_OPTION, "rate") => "resync-rate",
            (tk::DISK_OPTION, "after") => "resync-after",
            _ => return,
        };
        *name = new.to_string();
    }

    /// The 8.3 `syncer` section, distributed over the disk, net and resource options.
    fn parse_syncer(&mut self, res: &mut Resource) -> PResult<()> {
        self.c_section_start = self.line();
        self.set_fline();
        loop {
            let mut t = self.lex();
            self.set_fline();
            if t >= tk::GLOBAL && t & tk::SYNCER_OLD_OPT == 0 {
                return Err(self.pe_expected("a syncer option keyword"));
            }
            t &= !tk::SYNCER_OLD_OPT;
            let target = match t {
                tk::NET_FLAG | tk::NET_NO_FLAG | tk::NET_OPTION => 0,
                tk::DISK_FLAG | tk::DISK_NO_FLAG | tk::DISK_OPTION => 1,
                tk::RES_OPTION => 2,
                0x7d => return Ok(()),
                _ => return Err(self.pe_expected("a syncer option keyword")),
            };
            let mut name = self.value.clone();
            let opt;
            let next;
            match t {
                tk::NET_FLAG | tk::DISK_FLAG => {
                    let n = self.lex();
                    if n == tk::NO {
                        opt = Opt::new(name, "no");
                        next = self.lex();
                    } else {
                        opt = Opt::new(name, "yes");
                        next = if n == tk::YES { self.lex() } else { n };
                    }
                }
                tk::NET_NO_FLAG | tk::DISK_NO_FLAG => {
                    opt = Opt::new(name.trim_start_matches("no-"), "no");
                    next = self.lex();
                }
                _ => {
                    Self::alias(&mut name, t);
                    let rc = self.rc;
                    self.expect_string_or_int()?;
                    let mut v = self.value.clone();
                    self.session.range_check(rc, &name, &mut v)?;
                    opt = Opt::new(name, v);
                    next = self.lex();
                }
            }
            match target {
                0 => res.net_options.push(opt),
                1 => res.disk_options.push(opt),
                _ => res.res_options.push(opt),
            }
            if next != 0x3b {
                return Err(self.pe_expected(";"));
            }
        }
    }

    fn parse_options(
        &mut self,
        flag: u32,
        no_flag: u32,
        option: u32,
        delegate: Delegate,
        extra: &mut Extra,
    ) -> PResult<Vec<Opt>> {
        let mut opts = Vec::new();
        self.c_section_start = self.line();
        self.set_fline();
        loop {
            let group = self.lex();
            let t = tk::base(group);
            self.set_fline();
            let mut name = self.value.clone();
            if t == 0 {
                return Err(self.pe_expected("an option"));
            } else if flag != 0 && t == flag {
                match self.lex() {
                    tk::YES => opts.push(Opt::new(name, "yes")),
                    tk::NO => opts.push(Opt::new(name, "no")),
                    0x3b => {
                        opts.push(Opt::new(name, "yes"));
                        continue;
                    }
                    _ => return Err(self.pe_expected("yes | no | ;")),
                }
            } else if no_flag != 0 && t == no_flag {
                opts.push(Opt::new(name.trim_start_matches("no-"), "no"));
            } else if t == option
                || tk::group(option & group) != 0
                || (delegate == Delegate::Net
                    && group == tk::DISK_OPTION
                    && self.tok.text == "fencing")
            {
                Self::alias(&mut name, option);
                let rc = self.rc;
                self.expect_string_or_int()?;
                let mut v = self.value.clone();
                self.session.range_check(rc, &name, &mut v)?;
                opts.push(Opt::new(name, v));
            } else if delegate == Delegate::Startup && t == tk::STARTUP_DELEGATE {
                if self.tok.text == "become-primary-on" {
                    extra.become_primary_on = Some(self.parse_hosts(0x3b)?);
                } else {
                    extra.stacked_timeouts = true;
                    self.exp_char(';')?;
                }
                continue;
            } else if delegate == Delegate::Proxy && t == tk::PROXY_DELEGATE {
                extra.plugins = Some(self.parse_plugin()?);
                continue;
            } else if delegate == Delegate::Net && t == tk::NET_DELEGATE {
                // `discard-my-data` is only accepted when parsing for `adjust`.
                return Err(self.pe_expected("an option keyword"));
            } else if t == tk::DEPRECATED_OPTION {
                self.expect_string_or_int()?;
            } else if t == 0x7d {
                return Ok(opts);
            } else {
                return Err(self.pe_expected("an option keyword"));
            }
            self.exp_char(';')?;
        }
    }

    fn parse_plugin(&mut self) -> PResult<Vec<Opt>> {
        if self.lex() != 0x7b {
            let msg = format!(
                "{}:{}: expected \"{{\" after \"proxy\" keyword\n",
                self.session.file, self.session.fline
            );
            return Err(self.session.fatal(self.line(), msg, E_CONFIG_INVALID));
        }
        let mut options = Vec::new();
        loop {
            let mut words: Vec<String> = Vec::new();
            loop {
                let t = self.lex();
                if t == 0 {
                    let msg = format!(
                        "{}:{}: Unexpected end-of-file\n",
                        self.session.file, self.session.fline
                    );
                    return Err(self.session.fatal(self.line(), msg, E_CONFIG_INVALID));
                }
                if t == 0x3b {
                    break;
                }
                if t == 0x7d {
                    if words.is_empty() {
                        return Ok(options);
                    }
                    let msg = format!(
                        "{}:{}: Missing \";\" before  \"}}\"\n",
                        self.session.file, self.session.fline
                    );
                    return Err(self.session.fatal(self.line(), msg, E_CONFIG_INVALID));
                }
                words.push(self.tok.value.clone().unwrap_or(self.tok.text.clone()));
            }
            let mut name = words.join(" ");
            let mut end = name.len().min(255);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
            options.push(Opt {
                name,
                value: None,
                escaped: false,
            });
        }
    }

    fn parse_hosts(&mut self, delim: u32) -> PResult<Vec<String>> {
        let mut names = Vec::new();
        loop {
            let t = self.lex();
            if t == tk::STRING {
                names.push(self.value.clone());
            } else if t == delim {
                if names.is_empty() {
                    return Err(self.pe_expected_got("TK_STRING", t));
                }
                return Ok(names);
            } else {
                let d = char::from_u32(delim).unwrap_or('?');
                return Err(self.pe_expected_got(&format!("TK_STRING | '{d}'"), t));
            }
        }
    }

    fn parse_address_raw(&mut self) -> PResult<Address> {
        let af = match self.lex() {
            tk::SCI => {
                self.exp(tk::IPADDR, "TK_IPADDR")?;
                "ssocks".to_string()
            }
            tk::SSOCKS | tk::SDP | tk::IPV4 => {
                let af = self.value.clone();
                self.exp(tk::IPADDR, "TK_IPADDR")?;
                af
            }
            tk::IPV6 => {
                self.exp_char('[')?;
                self.exp(tk::IPADDR6, "TK_IPADDR6")?;
                "ipv6".to_string()
            }
            tk::IPADDR => "ipv4".to_string(),
            _ => return Err(self.pe_expected("ssocks | sdp | ipv4 | ipv6 | <ipv4 address> ")),
        };
        let addr = self.value.clone();
        if af == "ipv6" {
            self.exp_char(']')?;
        }
        self.exp_char(':')?;
        self.exp(tk::INTEGER, "TK_INTEGER")?;
        let mut port = self.value.clone();
        self.session.range_check_port(&mut port)?;
        Ok(Address { af, addr, port })
    }

    fn parse_address(&mut self, on_hosts: &[String]) -> PResult<Address> {
        let a = self.parse_address_raw()?;
        if addr_scope_local(&a.addr) {
            for h in on_hosts {
                self.session
                    .check_uniq("IP", format!("{h}:{}:{}", a.addr, a.port))?;
            }
        } else {
            self.session
                .check_uniq("IP", format!("{}:{}", a.addr, a.port))?;
        }
        self.exp_char(';')?;
        Ok(a)
    }

    fn parse_proxy_section(&mut self) -> PResult<Proxy> {
        let mut p = Proxy::default();
        self.exp(tk::ON, "TK_ON")?;
        p.on_hosts = self.parse_hosts(0x7b)?;
        loop {
            match self.lex() {
                tk::INSIDE => p.inside = Some(self.parse_address(&p.on_hosts.clone())?),
                tk::OUTSIDE => p.outside = Some(self.parse_address(&p.on_hosts.clone())?),
                tk::OPTIONS => {
                    let (o, pl) = self.parse_proxy_options()?;
                    p.options = o;
                    p.plugins = pl;
                }
                0x7d => return Ok(p),
                _ => return Err(self.pe_expected("inside | outside")),
            }
        }
    }

    fn parse_proxy_options(&mut self) -> PResult<(Vec<Opt>, Vec<Opt>)> {
        self.exp_char('{')?;
        let mut extra = Extra::default();
        let o = self.parse_options(
            0,
            0,
            tk::PROXY_OPTION | tk::PROXY_GROUP,
            Delegate::Proxy,
            &mut extra,
        )?;
        Ok((o, extra.plugins.unwrap_or_default()))
    }

    fn parse_meta_disk(&mut self, vol: &mut Volume) -> PResult<()> {
        self.exp(tk::STRING, "TK_STRING")?;
        vol.meta_disk = Some(self.value.clone());
        if self.value == "internal" {
            vol.meta_index = Some("internal".into());
            return self.exp_char(';');
        }
        match self.lex() {
            0x5b => {
                self.exp(tk::INTEGER, "TK_INTEGER")?;
                vol.meta_index = Some(self.value.clone());
                self.exp_char(']')?;
                self.exp_char(';')
            }
            0x3b => {
                vol.meta_index = Some("flexible".into());
                Ok(())
            }
            _ => Err(self.pe_expected("[ | ;")),
        }
    }

    fn check_minor_nonsense(&mut self, dev: Option<&str>, minor: u32) {
        let Some(dev) = dev else { return };
        let rest = dev.get(9..).unwrap_or("");
        let (file, fline) = (self.session.file.clone(), self.session.fline);
        if only_digits(rest) {
            if rest.parse::<u64>().ok() == Some(u64::from(minor)) {
                return;
            }
            self.session.error(
                fline,
                format!(
                    "{file}:{fline}: explicit minor number must match with device name\n\
                     \tTry \"device /dev/drbd{minor} minor {minor};\",\n\
                     \tor leave off either device name or explicit minor.\n\
                     \tArbitrary device names must start with /dev/drbd_\n\
                     \tmind the '_'! (/dev/ is optional, but drbd_ is required)\n"
                ),
            );
        } else if !rest.starts_with('_') {
            self.session.error(
                fline,
                format!(
                    "{file}:{fline}: arbitrary device name must start with /dev/drbd_\n\
                     \tmind the '_'! (/dev/ is optional, but drbd_ is required)\n"
                ),
            );
        }
    }

    fn parse_device(&mut self, on_hosts: &[String], vol: &mut Volume) -> PResult<()> {
        let mut t = self.lex();
        if t == tk::STRING {
            let dev = if self.value.starts_with("drbd") {
                format!("/dev/{}", self.value)
            } else {
                self.value.clone()
            };
            if !dev.starts_with("/dev/drbd") {
                let (file, fline) = (self.session.file.clone(), self.session.fline);
                self.session.error(
                    fline,
                    format!(
                        "{file}:{fline}: device name must start with /dev/drbd\n\t(/dev/ is optional, but drbd is required)\n"
                    ),
                );
            }
            vol.device = Some(dev.clone());
            match self.lex() {
                0x3b => {
                    match minor_of_dev(&dev) {
                        Some(m) => vol.minor = Some(m),
                        None => {
                            let (file, fline) = (self.session.file.clone(), self.session.fline);
                            self.session.error(
                                fline,
                                format!("{file}:{fline}: no minor given nor device name contains a minor number\n"),
                            );
                            vol.minor = Some(u32::MAX);
                        }
                    }
                    t = 0;
                }
                tk::MINOR => t = tk::MINOR,
                _ => return Err(self.pe_expected("minor | ;")),
            }
        }
        if t == tk::MINOR {
            self.exp(tk::INTEGER, "TK_INTEGER")?;
            let m = atoi(&self.value);
            vol.minor = Some(m);
            self.exp_char(';')?;
            let dev = vol.device.clone();
            self.check_minor_nonsense(dev.as_deref(), m);
        }
        let minor = vol.minor.unwrap_or(u32::MAX);
        for h in on_hosts {
            self.session
                .check_uniq("device-minor", format!("device-minor:{h}:{minor}"))?;
            if let Some(d) = &vol.device {
                self.session
                    .check_uniq("device", format!("device:{h}:{d}"))?;
            }
        }
        Ok(())
    }

    fn volume0<'v>(&mut self, vols: &'v mut Vec<Volume>) -> &'v mut Volume {
        if vols.is_empty() {
            vols.push(Volume {
                implicit: true,
                ..Volume::default()
            });
        } else if !(vols.len() == 1 && vols[0].vnr == 0 && vols[0].implicit) {
            let msg = format!(
                "{}:{}: mixing explicit and implicit volumes is not allowed\n",
                self.session.file,
                self.line()
            );
            self.session.error(self.line(), msg);
        }
        &mut vols[0]
    }

    fn parse_volume_stmt(
        &mut self,
        vol: &mut Volume,
        on_hosts: &[String],
        t: u32,
    ) -> PResult<bool> {
        match t {
            tk::DISK => {
                let t2 = self.lex();
                match t2 {
                    tk::STRING => {
                        vol.disk = Some(self.value.clone());
                        self.exp_char(';')?;
                    }
                    0x7b => {
                        let mut e = Extra::default();
                        vol.disk_options = self.parse_options(
                            tk::DISK_FLAG,
                            tk::DISK_NO_FLAG,
                            tk::DISK_OPTION,
                            Delegate::None,
                            &mut e,
                        )?;
                    }
                    _ => {
                        self.check_string_error(t2)?;
                        return Err(self.pe_expected_got("TK_STRING | {", t2));
                    }
                }
            }
            tk::DEVICE => self.parse_device(on_hosts, vol)?,
            tk::META_DISK => self.parse_meta_disk(vol)?,
            tk::FLEX_META_DISK => {
                self.exp(tk::STRING, "TK_STRING")?;
                vol.meta_disk = Some(self.value.clone());
                vol.meta_index = Some(if self.value == "internal" {
                    "internal".into()
                } else {
                    "flexible".into()
                });
                self.exp_char(';')?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn parse_volume(&mut self, vnr: u32, on_hosts: &[String]) -> PResult<Volume> {
        let mut vol = Volume {
            vnr,
            ..Volume::default()
        };
        self.exp_char('{')?;
        loop {
            let t = self.lex();
            if t == 0x7d {
                return Ok(vol);
            }
            if !self.parse_volume_stmt(&mut vol, on_hosts, t)? {
                return Err(
                    self.pe_expected_got("device | disk | meta-disk | flex-meta-disk | }", t)
                );
            }
        }
    }

    fn inherit_volumes(&mut self, from: &[Volume], host: &mut Host) -> PResult<()> {
        for s in from {
            let idx = match host.volumes.iter().position(|v| v.vnr == s.vnr) {
                Some(i) => i,
                None => {
                    let v = Volume {
                        vnr: s.vnr,
                        implicit: s.implicit,
                        ..Volume::default()
                    };
                    insert_sorted(&mut host.volumes, v)
                }
            };
            let t = &mut host.volumes[idx];
            if t.disk.is_none() {
                if let Some(d) = &s.disk {
                    t.disk = Some(d.clone());
                    for h in &host.on_hosts {
                        self.session.check_uniq("disk", format!("disk:{h}:{d}"))?;
                    }
                }
            }
            let t = &mut host.volumes[idx];
            if t.device.is_none() {
                t.device.clone_from(&s.device);
            }
            if t.minor.is_none() {
                if let Some(m) = s.minor {
                    t.minor = Some(m);
                    for h in &host.on_hosts {
                        self.session
                            .check_uniq("device-minor", format!("device-minor:{h}:{}", m as i32))?;
                    }
                }
            }
            let t = &mut host.volumes[idx];
            if t.meta_disk.is_none() && s.meta_disk.is_some() {
                t.meta_disk.clone_from(&s.meta_disk);
                if s.meta_index.is_some() {
                    t.meta_index.clone_from(&s.meta_index);
                }
            }
        }
        Ok(())
    }

    fn derror(&mut self, host: &Host, res: &str, what: &str) {
        let msg = format!(
            "{}:{}: in resource {res}, on {} {{ ... }}: '{what}' keyword missing.\n",
            self.session.file,
            self.c_section_start,
            host.on_hosts.join(" ")
        );
        self.session.error(self.c_section_start, msg);
    }

    fn check_volumes_complete(&mut self, res: &str, host: &Host) {
        let mut any_implicit = false;
        let mut any_nonzero = false;
        for v in &host.volumes {
            any_implicit |= v.implicit;
            any_nonzero |= v.vnr != 0;
            if v.device.is_none() && v.minor.is_none() {
                self.derror(host, res, "device");
            }
            if v.disk.is_none() {
                self.derror(host, res, "disk");
            }
            if v.meta_disk.is_none() {
                self.derror(host, res, "meta-disk");
            }
            if v.meta_index.is_none() {
                self.derror(host, res, "meta-index");
            }
        }
        if any_implicit && any_nonzero {
            let msg = format!(
                "{}:{}: in resource {res}: you must not mix implicit and explicit volumes\n",
                self.session.file,
                self.line()
            );
            self.session.error(self.line(), msg);
        }
    }

    fn parse_host_section(
        &mut self,
        res: &mut Resource,
        on_hosts: Vec<String>,
        require_all: bool,
        by_address: bool,
    ) -> PResult<()> {
        self.c_section_start = self.line();
        self.set_fline();
        let mut host = Host {
            on_hosts,
            config_line: self.line(),
            ..Host::default()
        };
        let mut in_braces = true;
        if by_address {
            host.by_address = true;
            let a = self.parse_address_raw()?;
            self.session
                .check_uniq("IP", format!("{}:{}", a.addr, a.port))?;
            let fake = if a.af == "ipv6" {
                format!("ipv6 [{}]:{}", a.addr, a.port)
            } else {
                format!("{}:{}", a.addr, a.port)
            };
            host.on_hosts = vec![fake];
            host.address = Some(a);
            match self.lex() {
                0x7b => {}
                0x3b => in_braces = false,
                t => return Err(self.pe_expected_got("{ | ;", t)),
            }
        }
        for h in host.on_hosts.clone() {
            self.check_upr("host section", format!("{}: on {h}", res.name))?;
        }
        let hosts = host.on_hosts.clone();
        while in_braces {
            let t = self.lex();
            self.set_fline();
            match t {
                tk::DISK | tk::DEVICE | tk::META_DISK | tk::FLEX_META_DISK => {
                    let (what, key) = match t {
                        tk::DISK => ("disk statement", "disk"),
                        tk::DEVICE => ("device statement", "device"),
                        _ => ("meta-disk statement", "meta-disk"),
                    };
                    for h in &hosts {
                        self.check_upr(what, format!("{}:{h}:{key}", res.name))?;
                    }
                    let mut vols = std::mem::take(&mut host.volumes);
                    let r = {
                        let v = self.volume0(&mut vols);
                        let mut tmp = std::mem::take(v);
                        let r = self.parse_volume_stmt(&mut tmp, &hosts, t);
                        *v = tmp;
                        r
                    };
                    host.volumes = vols;
                    r?;
                }
                tk::ADDRESS | tk::ALT_ADDRESS => {
                    if host.by_address {
                        let msg = format!(
                            "{}:{}: address statement not allowed for floating {{}} host sections\n",
                            self.session.file, self.session.fline
                        );
                        return Err(self
                            .session
                            .fatal(self.session.fline, msg, E_CONFIG_INVALID));
                    }
                    let (what, key) = if t == tk::ADDRESS {
                        ("address statement", "address")
                    } else {
                        ("alt-address statement", "alt-address")
                    };
                    for h in &hosts {
                        self.check_upr(what, format!("{}:{h}:{key}", res.name))?;
                    }
                    let a = self.parse_address(&hosts)?;
                    let mut port = a.port.clone();
                    self.session.range_check_port(&mut port)?;
                    if t == tk::ADDRESS {
                        host.address = Some(a);
                    } else {
                        host.alt_address = Some(a);
                    }
                }
                tk::PROXY => host.proxy = Some(self.parse_proxy_section()?),
                tk::VOLUME => {
                    self.exp(tk::INTEGER, "TK_INTEGER")?;
                    let vnr = atoi(&self.value);
                    let v = self.parse_volume(vnr, &hosts)?;
                    insert_sorted(&mut host.volumes, v);
                }
                tk::OPTIONS => {
                    self.exp_char('{')?;
                    let mut e = Extra::default();
                    host.res_options =
                        self.parse_options(0, 0, tk::RES_OPTION, Delegate::None, &mut e)?;
                }
                0x7d => in_braces = false,
                tk::STRING if self.value == "node-id" => {
                    // DRBD 9 only.
                    self.exp(tk::INTEGER, "TK_INTEGER")?;
                    host.node_id = Some(atoi(&self.value));
                    self.exp_char(';')?;
                }
                _ => {
                    return Err(self
                        .pe_expected("disk | device | address | meta-disk | flexible-meta-disk"))
                }
            }
        }
        let rv = res.volumes.clone();
        self.inherit_volumes(&rv, &mut host)?;
        for v in &host.volumes {
            if let Some(md) = &v.meta_disk {
                if md != "internal" {
                    let idx = v.meta_index.as_deref().unwrap_or("(null)");
                    for h in &host.on_hosts {
                        self.session
                            .check_uniq("meta-disk", format!("{h}:{md}[{idx}]"))?;
                    }
                }
            }
        }
        if require_all {
            if host.address.is_none() {
                self.derror(&host, &res.name, "address");
            }
            self.check_volumes_complete(&res.name.clone(), &host);
        }
        res.hosts.push(host);
        Ok(())
    }

    fn parse_stacked_section(&mut self, res: &mut Resource) -> PResult<()> {
        self.c_section_start = self.line();
        self.set_fline();
        let mut host = Host {
            config_line: self.line(),
            ..Host::default()
        };
        self.exp(tk::STRING, "TK_STRING")?;
        self.session
            .check_uniq("stacked-on-top-of", format!("stacked:{}", self.value))?;
        host.lower_name = Some(self.value.clone());
        self.exp_char('{')?;
        loop {
            match self.lex() {
                tk::DEVICE => {
                    let mut vols = std::mem::take(&mut host.volumes);
                    let v = self.volume0(&mut vols);
                    let mut tmp = std::mem::take(v);
                    let r = self.parse_device(&[], &mut tmp);
                    tmp.meta_disk = Some("internal".into());
                    tmp.meta_index = Some("internal".into());
                    *v = tmp;
                    host.volumes = vols;
                    r?;
                }
                t @ (tk::ADDRESS | tk::ALT_ADDRESS) => {
                    let a = self.parse_address(&[])?;
                    let mut port = a.port.clone();
                    self.session.range_check_port(&mut port)?;
                    if t == tk::ADDRESS {
                        host.address = Some(a);
                    } else {
                        host.alt_address = Some(a);
                    }
                }
                tk::PROXY => host.proxy = Some(self.parse_proxy_section()?),
                tk::VOLUME => {
                    self.exp(tk::INTEGER, "TK_INTEGER")?;
                    let mut vol = Volume {
                        vnr: atoi(&self.value),
                        ..Volume::default()
                    };
                    self.exp_char('{')?;
                    self.exp(tk::DEVICE, "TK_DEVICE")?;
                    self.parse_device(&[], &mut vol)?;
                    self.exp_char('}')?;
                    vol.meta_disk = Some("internal".into());
                    vol.meta_index = Some("internal".into());
                    insert_sorted(&mut host.volumes, vol);
                }
                0x7d => break,
                _ => return Err(self.pe_expected("device | address | proxy")),
            }
        }
        res.stacked_on_one = true;
        let rv = res.volumes.clone();
        self.inherit_volumes(&rv, &mut host)?;
        if host.address.is_none() {
            self.derror(&host, &res.name, "address");
        }
        res.hosts.push(host);
        Ok(())
    }

    fn parse_skip(&mut self) -> PResult<()> {
        self.set_fline();
        let t = self.lex();
        match t {
            tk::STRING => self.exp_char('{')?,
            0x7b => {}
            _ => {
                self.check_string_error(t)?;
                return Err(self.pe_expected("[ some_text ] {"));
            }
        }
        let mut level = 1u64;
        while level > 0 {
            match self.lex() {
                0x7b => level += 1,
                0x7d => level -= 1,
                0 => {
                    let msg = format!(
                        "{}:{}: reached eof while parsing this skip block.\n",
                        self.session.file, self.session.fline
                    );
                    return Err(self
                        .session
                        .fatal(self.session.fline, msg, E_CONFIG_INVALID));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// DRBD 9 `connection { host A [address ...]; host B ...; net { ... } }`.
    fn parse_connection(&mut self, res: &mut Resource) -> PResult<()> {
        let mut c = Connection {
            line: self.line(),
            ..Connection::default()
        };
        self.exp_char('{')?;
        loop {
            let t = self.lex();
            self.set_fline();
            match t {
                tk::STRING if self.value == "host" => {
                    self.exp(tk::STRING, "TK_STRING")?;
                    c.hosts.push(self.value.clone());
                    match self.lex() {
                        0x3b => {}
                        tk::ADDRESS => {
                            self.parse_address_raw()?;
                            self.exp_char(';')?;
                        }
                        t => return Err(self.pe_expected_got(";", t)),
                    }
                }
                tk::NET => {
                    self.exp_char('{')?;
                    let mut e = Extra::default();
                    let o = self.parse_options(
                        tk::NET_FLAG,
                        tk::NET_NO_FLAG,
                        tk::NET_OPTION,
                        Delegate::Net,
                        &mut e,
                    )?;
                    c.net_options.extend(o);
                }
                0x7d => break,
                _ => return Err(self.pe_expected("host | net | }")),
            }
        }
        res.connections.push(c);
        Ok(())
    }

    fn parse_resource(&mut self, name: String, kind: ResKind) -> PResult<Resource> {
        self.upr.clear();
        self.session.check_uniq("resource section", name.clone())?;
        let mut res = Resource {
            name,
            config_file: self.session.save.clone(),
            start_line: self.line(),
            ..Resource::default()
        };
        loop {
            let t = self.lex();
            self.set_fline();
            match t {
                tk::NET_OPTION if self.value == "protocol" => {
                    self.check_upr("protocol statement", format!("{}: protocol", res.name))?;
                    let n = self.value.clone();
                    self.exp(tk::STRING, "TK_STRING")?;
                    let mut v = self.value.clone();
                    self.session.range_check(Rc::Protocol, &n, &mut v)?;
                    res.net_options.push(Opt::new(n, v));
                    self.exp_char(';')?;
                }
                tk::ON => {
                    let names = self.parse_hosts(0x7b)?;
                    self.parse_host_section(&mut res, names, true, false)?;
                }
                tk::STACKED => self.parse_stacked_section(&mut res)?,
                tk::IGNORE => {
                    self.exp(tk::STRING, "TK_STRING")?;
                    let msg = format!(
                        "{}:{}: in resource {}, WARN: The 'ignore-on' keyword is deprecated.\n",
                        self.session.file,
                        self.line(),
                        res.name
                    );
                    self.session.warn(self.line(), msg);
                    self.exp_char(';')?;
                }
                tk::THIS_HOST | tk::REMOTE_HOST => {
                    self.exp_char('{')?;
                    let n = if t == tk::THIS_HOST {
                        "_this_host"
                    } else {
                        "_remote_host"
                    };
                    self.parse_host_section(&mut res, vec![n.into()], false, false)?;
                }
                tk::FLOATING => self.parse_host_section(&mut res, Vec::new(), true, true)?,
                tk::DISK => {
                    let t2 = self.lex();
                    match t2 {
                        tk::STRING => {
                            let v = self.value.clone();
                            let mut vols = std::mem::take(&mut res.volumes);
                            self.volume0(&mut vols).disk = Some(v);
                            res.volumes = vols;
                            self.exp_char(';')?;
                        }
                        0x7b => {
                            self.check_upr("disk section", format!("{}:disk", res.name))?;
                            let mut e = Extra::default();
                            let o = self.parse_options(
                                tk::DISK_FLAG,
                                tk::DISK_NO_FLAG,
                                tk::DISK_OPTION,
                                Delegate::None,
                                &mut e,
                            )?;
                            res.disk_options.extend(o);
                        }
                        _ => {
                            self.check_string_error(t2)?;
                            return Err(self.pe_expected_got("TK_STRING | {", t2));
                        }
                    }
                }
                tk::NET => {
                    self.check_upr("net section", format!("{}:net", res.name))?;
                    self.exp_char('{')?;
                    let mut e = Extra::default();
                    let o = self.parse_options(
                        tk::NET_FLAG,
                        tk::NET_NO_FLAG,
                        tk::NET_OPTION,
                        Delegate::Net,
                        &mut e,
                    )?;
                    res.net_options.extend(o);
                }
                tk::SYNCER => {
                    self.check_upr("syncer section", format!("{}:syncer", res.name))?;
                    self.exp_char('{')?;
                    self.parse_syncer(&mut res)?;
                }
                tk::STARTUP => {
                    self.check_upr("startup section", format!("{}:startup", res.name))?;
                    self.exp_char('{')?;
                    let mut e = Extra::default();
                    res.startup_options = self.parse_options(
                        tk::STARTUP_FLAG,
                        0,
                        tk::STARTUP_OPTION,
                        Delegate::Startup,
                        &mut e,
                    )?;
                    if let Some(b) = e.become_primary_on {
                        res.become_primary_on = b;
                    }
                    res.stacked_timeouts |= e.stacked_timeouts;
                }
                tk::HANDLER => {
                    self.check_upr("handlers section", format!("{}:handlers", res.name))?;
                    self.exp_char('{')?;
                    let mut e = Extra::default();
                    res.handlers =
                        self.parse_options(0, 0, tk::HANDLER_OPTION, Delegate::None, &mut e)?;
                }
                tk::PROXY => {
                    self.check_upr("proxy section", format!("{}:proxy", res.name))?;
                    let (o, p) = self.parse_proxy_options()?;
                    res.proxy_options = o;
                    res.proxy_plugins = p;
                }
                tk::DEVICE | tk::META_DISK | tk::FLEX_META_DISK => {
                    if t == tk::DEVICE {
                        self.check_upr("device statement", format!("{}:device", res.name))?;
                    }
                    let mut vols = std::mem::take(&mut res.volumes);
                    let r = {
                        let v = self.volume0(&mut vols);
                        let mut tmp = std::mem::take(v);
                        let r = self.parse_volume_stmt(&mut tmp, &[], t);
                        *v = tmp;
                        r
                    };
                    res.volumes = vols;
                    r?;
                }
                tk::VOLUME => {
                    self.exp(tk::INTEGER, "TK_INTEGER")?;
                    let vnr = atoi(&self.value);
                    let v = self.parse_volume(vnr, &[])?;
                    insert_sorted(&mut res.volumes, v);
                }
                tk::OPTIONS => {
                    self.check_upr(
                        "resource options section",
                        format!("{}:res_options", res.name),
                    )?;
                    self.exp_char('{')?;
                    let mut e = Extra::default();
                    let o = self.parse_options(0, 0, tk::RES_OPTION, Delegate::None, &mut e)?;
                    res.res_options.extend(o);
                }
                tk::STRING if self.value == "connection" && kind == ResKind::Resource => {
                    self.parse_connection(&mut res)?;
                }
                0x7d | 0 => break,
                _ => {
                    return Err(self.pe_expected_got(
                        "protocol | on | disk | net | syncer | startup | handlers | ignore-on | stacked-on-top-of",
                        t,
                    ))
                }
            }
        }
        if kind == ResKind::Common && !res.hosts.is_empty() {
            let msg = format!(
                "{}:{}: in the {} section, there are no host sections allowed.\n",
                self.session.file, self.c_section_start, res.name
            );
            self.session.error(self.c_section_start, msg);
        }
        self.check_volumes_hosts(&res);
        Ok(res)
    }

    fn check_volumes_hosts(&mut self, res: &Resource) {
        let Some(h1) = res.hosts.first() else { return };
        for h2 in &res.hosts[1..] {
            let msgs = volume_set_diffs(
                &res.name,
                &h1.on_hosts.join(" "),
                &h2.on_hosts.join(" "),
                &h1.volumes,
                &h2.volumes,
            );
            for m in msgs {
                let msg = format!("{}:{}: {m}", self.session.file, self.line());
                self.session.error(self.line(), msg);
            }
        }
    }
}

impl Session {
    fn range_check_port(&mut self, port: &mut str) -> PResult<()> {
        self.strtoll_range(port, Unit::One, "port", 1, 0xffff)
    }
}

/// Differences between two hosts' volume lists, as drbdadm words them (without `FILE:LINE: `).
fn volume_set_diffs(res: &str, n1: &str, n2: &str, a: &[Volume], b: &[Volume]) -> Vec<String> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while i < a.len() && (j >= b.len() || a[i].vnr < b[j].vnr) {
            out.push(format!(
                "in resource {res}, on {n1} {{ ... }}: volume {} not defined on {n2}\n",
                a[i].vnr
            ));
            i += 1;
        }
        while j < b.len() && (i >= a.len() || a[i].vnr > b[j].vnr) {
            out.push(format!(
                "in resource {res}, on {n1} {{ ... }}: volume {} missing (present on {n2})\n",
                b[j].vnr
            ));
            j += 1;
        }
        if i < a.len() && j < b.len() && a[i].vnr == b[j].vnr {
            if a[i].implicit != b[j].implicit {
                out.push(format!(
                    "in resource {res}, on {n1} resp. {n2}: volume {} must not be implicit on one but not the other\n",
                    a[i].vnr
                ));
            }
            i += 1;
            j += 1;
        }
    }
    out
}

/// Inserts `v` after every volume with a number not above its own; returns its index.
fn insert_sorted(list: &mut Vec<Volume>, v: Volume) -> usize {
    let pos = list
        .iter()
        .position(|x| x.vnr > v.vnr)
        .unwrap_or(list.len());
    list.insert(pos, v);
    pos
}

fn only_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The minor number a device path implies: `N`, `/dev/drbdN`, or an existing DRBD block device.
pub fn minor_of_dev(dev: &str) -> Option<u32> {
    let digits = if only_digits(dev) {
        dev
    } else if dev.starts_with("/dev/drbd") && only_digits(&dev[9..]) {
        &dev[9..]
    } else {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let md = std::fs::metadata(dev).ok()?;
        if md.file_type().is_block_device() {
            let rdev = md.rdev();
            let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
            let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
            if major == 147 {
                return u32::try_from(minor).ok();
            }
        }
        return None;
    };
    digits.parse::<i64>().ok().map(|m| m as u32)
}

/// Whether an address is a loopback address (`addr_scope_local`).
pub fn addr_scope_local(addr: &str) -> bool {
    if let Ok(a) = addr.parse::<std::net::Ipv6Addr>() {
        return a.is_loopback();
    }
    if let Ok(a) = addr.parse::<std::net::Ipv4Addr>() {
        return a.is_loopback();
    }
    false
}

/// drbdadm's `canonify_path`: the directory part resolved, the last component kept.
pub fn canonify(cwd: &Path, path: &str) -> Option<String> {
    let (dir, base) = match path.rfind('/') {
        Some(i) => (cwd.join(&path[..i]), &path[i + 1..]),
        None => (cwd.to_path_buf(), path),
    };
    if path.rfind('/') == Some(0) {
        return None;
    }
    let d = std::fs::canonicalize(dir).ok()?;
    let d = d.to_string_lossy();
    if d == "/" {
        Some(format!("/{base}"))
    } else {
        Some(format!("{d}/{base}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<(Config, Session), ParseError> {
        let opts = ParseOptions {
            file: "t.res".into(),
            save: "/tmp/t.res".into(),
            cwd: PathBuf::from("/tmp"),
            no_tty: true,
            follow_includes: false,
        };
        let (r, s) = Parser::parse(src.as_bytes().to_vec(), &opts);
        r.map(|c| (c, s))
    }

    #[test]
    fn missing_semicolon_names_line_and_token() {
        let e = parse("resource r {\n device minor 1;\n disk /dev/x\n meta-disk internal;\n}")
            .unwrap_err();
        assert_eq!(
            e.message,
            "t.res:4: Parse error: ';' expected,\n\tbut got 'meta-disk' (TK 277)\n"
        );
        assert_eq!((e.line, e.exit_code), (4, 10));
    }

    #[test]
    fn syncer_and_protocol_are_rewritten() {
        let (c, s) = parse(
            "resource r { protocol b; syncer { rate 10M; after r; verify-alg md5; use-rle; } \
             on a { device minor 1; disk /d; meta-disk internal; address 1.2.3.4:5; } }",
        )
        .unwrap();
        assert!(s.valid);
        let r = &c.resources[0];
        assert_eq!(r.net_options[0], Opt::new("protocol", "B"));
        assert_eq!(r.disk_options[0], Opt::new("resync-rate", "10M"));
        assert_eq!(r.disk_options[1], Opt::new("resync-after", "r"));
        assert_eq!(r.net_options[2], Opt::new("use-rle", "yes"));
    }

    #[test]
    fn out_of_range_is_reported_and_parsing_goes_on() {
        let (_, s) = parse("common { disk { resync-rate 100G; } }").unwrap();
        assert!(!s.valid);
        assert_eq!(
            s.diagnostics[0].message,
            "t.res:1: resync-rate 100G => 104857600k out of range [1..4194304]k.\n"
        );
    }

    #[test]
    fn duplicate_minor_is_fatal() {
        let e = parse(
            "resource a { device minor 4; disk /a; meta-disk internal; on x { address 1.1.1.1:1; } }\n\
             resource b { device minor 4; disk /b; meta-disk internal; on x { address 1.1.1.1:2; } }",
        )
        .unwrap_err();
        assert!(e
            .message
            .contains("conflicting use of device-minor 'device-minor:x:4'"));
    }
}
