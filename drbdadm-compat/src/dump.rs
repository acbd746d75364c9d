//! `drbdadm dump`: prints a parsed configuration in drbdadm-84's layout, byte for byte.

use std::fmt::Write;

use crate::res::ast::{Address, Config, Global, Host, Opt, Resource, UsageCount, Volume};
use crate::res::ast::{CMD_TIMEOUT_LONG_DEF, CMD_TIMEOUT_MEDIUM_DEF, CMD_TIMEOUT_SHORT_DEF};

/// Quotes a value the way drbdadm's `esc()` does: empty becomes `""`; anything outside
/// `[A-Za-z0-9/._-]` or longer than 80 characters is double-quoted with `"` and `\` escaped.
pub fn esc(s: &str) -> String {
    if s.is_empty() {
        return "\"\"".into();
    }
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
    if plain && s.len() <= 80 {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// C's `%*s` with a possibly negative width: negative left-justifies.
fn pad(s: &str, width: i32) -> String {
    let w = width.unsigned_abs() as usize;
    let len = s.len();
    if len >= w {
        return s.into();
    }
    let fill = " ".repeat(w - len);
    if width < 0 {
        format!("{s}{fill}")
    } else {
        format!("{fill}{s}")
    }
}

/// The printer state: output and the indentation level (4 spaces each).
struct Out {
    buf: String,
    indent: i32,
}

impl Out {
    fn lead(&self) -> String {
        pad("", 4 * self.indent)
    }

    fn line(&mut self, text: &str) {
        let l = self.lead();
        let _ = writeln!(self.buf, "{l}{text}");
    }

    /// `printA`: name left-justified in the remaining width of 24 columns, value right-justified
    /// in 3.
    fn attr(&mut self, name: &str, val: &str) {
        let l = self.lead();
        let _ = writeln!(
            self.buf,
            "{l}{} {};",
            pad(name, -24 + 4 * self.indent),
            pad(val, 3)
        );
    }

    fn options(&mut self, name: &str, opts: &[Opt]) {
        self.options_with(name, opts, None);
    }

    fn options_with(&mut self, name: &str, opts: &[Opt], plugins: Option<&[Opt]>) {
        let plugins = plugins.filter(|p| !p.is_empty());
        if opts.is_empty() && plugins.is_none() {
            return;
        }
        self.line(&format!("{name} {{"));
        self.indent += 1;
        for o in opts {
            match &o.value {
                Some(v) if o.escaped => self.attr(&o.name, v),
                Some(v) => self.attr(&o.name, &esc(v)),
                None => self.line(&format!("{};", o.name)),
            }
        }
        if let Some(p) = plugins {
            self.options("plugin", p);
        }
        self.indent -= 1;
        self.line("}");
    }

    fn address(&mut self, name: &str, a: &Address) {
        if a.af == "ipv6" {
            self.line(&format!("{name:<16} {} [{}]:{};", a.af, a.addr, a.port));
        } else {
            self.line(&format!("{name:<16} {} {}:{};", a.af, a.addr, a.port));
        }
    }

    fn volume(&mut self, has_lower: bool, v: &Volume) {
        if !v.implicit {
            self.line(&format!("volume {} {{", v.vnr));
            self.indent += 1;
        }
        let empty = v.minor.is_none()
            && v.device.is_none()
            && v.disk.is_none()
            && v.meta_disk.is_none()
            && v.meta_index.is_none();
        if !empty {
            self.options("disk", &v.disk_options);
            let l = self.lead();
            let mut s = format!("{l}device{}", pad("", -19 + 4 * self.indent));
            if let Some(d) = &v.device {
                s.push_str(&esc(d));
                s.push(' ');
            }
            let minor = v.minor.map_or(-1, |m| m as i32);
            let _ = writeln!(s, "minor {minor};");
            self.buf.push_str(&s);
            if !has_lower {
                self.attr("disk", &esc(v.disk.as_deref().unwrap_or("")));
                let md = esc(v.meta_disk.as_deref().unwrap_or(""));
                match v.meta_index.as_deref() {
                    Some("flexible") => self.line(&format!("{:<16} {md};", "meta-disk")),
                    Some("internal") => self.attr("meta-disk", "internal"),
                    idx => self.line(&format!(
                        "{:<16} {md} [{}];",
                        "meta-disk",
                        idx.unwrap_or("(null)")
                    )),
                }
            }
        }
        if !v.implicit || empty {
            self.indent -= 1;
            self.line("}");
        }
    }

    fn host(&mut self, config: &Config, h: &Host) {
        if let Some(l) = h.lower {
            let name = config.resources.get(l).map_or("", |r| r.name.as_str());
            self.line(&format!("stacked-on-top-of {} {{", esc(name)));
            self.indent += 1;
            self.line(&format!("# on {} ", h.on_hosts.join(" ")));
        } else if h.by_address {
            if let Some(a) = &h.address {
                if a.af == "ipv6" {
                    self.line(&format!("floating ipv6 [{}]:{} {{", a.addr, a.port));
                } else {
                    self.line(&format!("floating {} {}:{} {{", a.af, a.addr, a.port));
                }
            }
            self.indent += 1;
        } else {
            self.line(&format!("on {} {{", h.on_hosts.join(" ")));
            self.indent += 1;
        }
        self.options("options", &h.res_options);
        for v in &h.volumes {
            self.volume(h.lower.is_some(), v);
        }
        if let Some(n) = h.node_id {
            self.attr("node-id", &n.to_string());
        }
        if !h.by_address {
            if let Some(a) = &h.address {
                self.address("address", a);
            }
        }
        if let Some(a) = &h.alt_address {
            self.address("alternate-link-address", a);
        }
        if let Some(p) = &h.proxy {
            self.line(&format!("proxy on {} {{", p.on_hosts.join(" ")));
            self.indent += 1;
            if let Some(a) = &p.inside {
                self.address("inside", a);
            }
            if let Some(a) = &p.outside {
                self.address("outside", a);
            }
            self.options_with("options", &p.options, Some(&p.plugins));
            self.indent -= 1;
            self.line("}");
        }
        self.indent -= 1;
        self.line("}");
    }

    /// The sections every resource (and `common`) prints after its hosts.
    fn sections(&mut self, r: &Resource) {
        let startup = fake_startup_options(r);
        self.options("options", &r.res_options);
        self.options("net", &r.net_options);
        self.options("disk", &r.disk_options);
        self.options("startup", &startup);
        self.options_with("proxy", &r.proxy_options, Some(&r.proxy_plugins));
        self.options("handlers", &r.handlers);
    }
}

/// `startup` options plus the two that drbdadm keeps outside the option list.
fn fake_startup_options(r: &Resource) -> Vec<Opt> {
    let mut v = r.startup_options.clone();
    if r.stacked_timeouts {
        v.push(Opt {
            name: "stacked-timeouts".into(),
            value: None,
            escaped: false,
        });
    }
    if !r.become_primary_on.is_empty() {
        v.push(Opt {
            name: "become-primary-on".into(),
            value: Some(r.become_primary_on.join(" ")),
            escaped: true,
        });
    }
    v
}

fn global(out: &mut Out, g: &Global) {
    if g.minor_count == 0
        && !g.disable_ip_verification
        && g.dialog_refresh == 1
        && g.usage_count == UsageCount::Ask
    {
        return;
    }
    out.line("global {");
    out.indent += 1;
    if g.disable_ip_verification {
        out.line("disable-ip-verification;");
    }
    if g.minor_count != 0 {
        out.line(&format!("minor-count {};", g.minor_count as i32));
    }
    if g.dialog_refresh != 1 {
        out.line(&format!("dialog-refresh {};", g.dialog_refresh as i32));
    }
    if g.usage_count != UsageCount::Ask {
        let u = if g.usage_count == UsageCount::Yes {
            "yes"
        } else {
            "no"
        };
        out.line(&format!("usage-count {u};"));
    }
    if g.cmd_timeout_short != CMD_TIMEOUT_SHORT_DEF {
        out.line(&format!("cmd-timeout-short {};", g.cmd_timeout_short));
    }
    if g.cmd_timeout_medium != CMD_TIMEOUT_MEDIUM_DEF {
        out.line(&format!("cmd-timeout-medium {};", g.cmd_timeout_medium));
    }
    if g.cmd_timeout_long != CMD_TIMEOUT_LONG_DEF {
        out.line(&format!("cmd-timeout-long {};", g.cmd_timeout_long));
    }
    out.indent -= 1;
    out.line("}");
    out.buf.push('\n');
}

/// The header `dump all` prints: the file name, `global` and `common`.
pub fn dump_header(config: &Config) -> String {
    let mut out = Out {
        buf: String::new(),
        indent: 0,
    };
    let _ = writeln!(out.buf, "# {}", config.config_file);
    global(&mut out, &config.global);
    if let Some(c) = &config.common {
        out.line("common {");
        out.indent += 1;
        out.sections(c);
        out.indent -= 1;
        out.buf.push_str("}\n\n");
    }
    out.buf
}

/// One resource as `dump` prints it, with its two comment lines.
pub fn dump_resource(config: &Config, r: &Resource, nodename: &str) -> String {
    let mut out = Out {
        buf: String::new(),
        indent: 0,
    };
    out.line(&format!(
        "# resource {} on {nodename}: {}, {}",
        esc(&r.name),
        if r.ignore { "ignored" } else { "not ignored" },
        if r.stacked { "stacked" } else { "not stacked" }
    ));
    out.line(&format!("# defined at {}:{}", r.config_file, r.start_line));
    out.line(&format!("resource {} {{", esc(&r.name)));
    out.indent += 1;
    for h in &r.hosts {
        out.host(config, h);
    }
    for c in &r.connections {
        out.line("connection {");
        out.indent += 1;
        for h in &c.hosts {
            out.line(&format!("host {h};"));
        }
        out.options("net", &c.net_options);
        out.indent -= 1;
        out.line("}");
    }
    out.sections(r);
    out.indent -= 1;
    out.buf.push_str("}\n\n");
    out.buf
}

/// `dump all`: header and every resource.
pub fn dump_all(config: &Config, nodename: &str) -> String {
    let mut s = dump_header(config);
    for r in &config.resources {
        s.push_str(&dump_resource(config, r, nodename));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(esc("abc/d.e_f-1"), "abc/d.e_f-1");
        assert_eq!(esc(""), "\"\"");
        assert_eq!(esc("a b"), "\"a b\"");
        assert_eq!(esc("a\"b\\"), "\"a\\\"b\\\\\"");
        assert_eq!(esc(&"x".repeat(81)), format!("\"{}\"", "x".repeat(81)));
    }

    #[test]
    fn attr_layout() {
        let mut o = Out {
            buf: String::new(),
            indent: 2,
        };
        o.attr("protocol", "C");
        o.attr("allow-two-primaries", "yes");
        assert_eq!(
            o.buf,
            "        protocol           C;\n        allow-two-primaries yes;\n"
        );
    }
}
