//! Readers for the files the audit judges: `/etc/passwd`, `/etc/shadow`, systemd unit files
//! (their `[Socket]` listeners), sysctl.d files, and systemd-boot loader entries. Pure
//! functions over text, tested on fixtures.

use serde::Serialize;

/// One line of `/etc/passwd` (passwd(5)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// The password field (`x`: see shadow).
    pub password: String,
    /// uid.
    pub uid: u32,
    /// Login shell.
    pub shell: String,
}

/// Parse `/etc/passwd`; malformed lines are returned as errors by line number.
pub fn passwd(text: &str) -> (Vec<PasswdEntry>, Vec<usize>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        match (f.len(), f.get(2).and_then(|u| u.parse().ok())) {
            (7, Some(uid)) => out.push(PasswdEntry {
                name: f[0].to_string(),
                password: f[1].to_string(),
                uid,
                shell: f[6].to_string(),
            }),
            _ => bad.push(i + 1),
        }
    }
    (out, bad)
}

/// What a password field allows (shadow(5), crypt(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Password {
    /// `*`, `!`, `!...` or `x`: no password can match.
    Locked,
    /// Empty: a login with no password at all.
    Empty,
    /// A hash: a password logs in.
    Hash,
}

/// Classify a shadow password field.
pub fn password(field: &str) -> Password {
    if field.is_empty() {
        Password::Empty
    } else if field.starts_with('!') || field.starts_with('*') || field == "x" {
        Password::Locked
    } else {
        Password::Hash
    }
}

/// `/etc/shadow` as (name, password field) pairs.
pub fn shadow(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// Shells that do not give a login (the rest do).
pub const NOLOGIN_SHELLS: [&str; 4] = [
    "/usr/sbin/nologin",
    "/sbin/nologin",
    "/bin/false",
    "/usr/bin/false",
];

/// A socket a unit listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listen {
    /// `ListenStream` (TCP), `ListenDatagram` (UDP) or `ListenSequentialPacket` (SCTP).
    pub kind: String,
    /// The value as written.
    pub address: String,
    /// The port, for network sockets; `None` for file-system, abstract and netlink sockets.
    pub port: Option<u16>,
}

impl Listen {
    /// The transport a network listener uses.
    pub fn proto(&self) -> &'static str {
        match self.kind.as_str() {
            "ListenStream" => "tcp",
            "ListenDatagram" => "udp",
            _ => "sctp",
        }
    }
}

/// The port of a `Listen*=` value if it is an IP socket (systemd.socket(5): a port number,
/// `ADDR:PORT`, `[V6]:PORT`, or `vsock:`; a path or `@abstract` is not network).
pub fn listen_port(v: &str) -> Option<u16> {
    let v = v.trim();
    if v.starts_with('/') || v.starts_with('@') || v.starts_with("vsock:") {
        return None;
    }
    if let Ok(p) = v.parse() {
        return Some(p);
    }
    let (_, port) = v.rsplit_once(':')?;
    // `%iface` scoping is written after the address and before the port's colon.
    port.parse().ok()
}

/// The `Listen*=` settings of a socket unit and its drop-ins, in order (systemd.unit(5): an
/// empty assignment resets the list built so far).
pub fn listens(files: &[&str]) -> Vec<Listen> {
    let mut out: Vec<Listen> = Vec::new();
    for text in files {
        let mut in_socket = false;
        for line in text.lines() {
            let l = line.trim();
            if l.starts_with('[') {
                in_socket = l == "[Socket]";
                continue;
            }
            if !in_socket || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            let Some((k, v)) = l.split_once('=') else {
                continue;
            };
            let k = k.trim();
            if !["ListenStream", "ListenDatagram", "ListenSequentialPacket"].contains(&k) {
                continue;
            }
            let v = v.trim();
            if v.is_empty() {
                out.retain(|x| x.kind != k);
                continue;
            }
            out.push(Listen {
                kind: k.to_string(),
                address: v.to_string(),
                port: listen_port(v),
            });
        }
    }
    out
}

/// Effective sysctl values from sysctl.d files given in the order systemd-sysctl applies them
/// (sysctl.d(5): sorted by file name, later assignments win; `-` marks an assignment whose
/// failure is ignored; `/` separators equal `.`; `*` globs match).
pub fn sysctl(files: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for text in files {
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            let Some((k, v)) = l.split_once('=') else {
                continue;
            };
            let k = k.trim().trim_start_matches('-').replace('/', ".");
            out.push((k, v.trim().to_string()));
        }
    }
    out
}

/// The value `key` ends up with after applying `assignments` in order.
pub fn sysctl_value(assignments: &[(String, String)], key: &str) -> Option<String> {
    assignments
        .iter()
        .rev()
        .find(|(k, _)| glob(k, key))
        .map(|(_, v)| v.clone())
}

/// `*` glob match (the only wildcard sysctl.d keys use in practice).
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((pre, rest)) => {
            let Some(tail) = s.strip_prefix(pre) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

/// The `options` line of a systemd-boot entry (Boot Loader Specification, type 1).
pub fn entry_options(text: &str) -> Option<String> {
    let opts: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("options"))
        .filter(|rest| rest.starts_with([' ', '\t']))
        .map(str::trim)
        .collect();
    (!opts.is_empty()).then(|| opts.join(" "))
}

/// The value of an entry's `key` line (`linux`, `initrd`), if it has one.
pub fn entry_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .find(|rest| rest.starts_with([' ', '\t']))
        .map(|rest| rest.trim().to_string())
}

/// The value of `key=` on a kernel command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Kernel arguments that open a shell or skip the normal boot (kernel-parameters.txt,
/// systemd-debug-generator(8), dracut.cmdline(7)).
pub const INSECURE_ARGS: [&str; 9] = [
    "init",
    "rdinit",
    "single",
    "emergency",
    "rescue",
    "rd.break",
    "rd.shell",
    "systemd.debug_shell",
    "systemd.unit",
];

/// Insecure arguments present on a command line.
pub fn insecure_args(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .filter(|w| {
            let k = w.split_once('=').map(|(k, _)| k).unwrap_or(w);
            INSECURE_ARGS.contains(&k) || *w == "1" || *w == "S"
        })
        .map(str::to_string)
        .collect()
}

/// The value of a loader.conf key (`editor no`).
pub fn loader_conf_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(key)).then(|| w.next().unwrap_or("").to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/audit")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn passwd_of_a_hardened_image() {
        let (entries, bad) = passwd(&fixture("passwd-hardened"));
        assert!(bad.is_empty());
        assert_eq!(entries[0].name, "root");
        assert_eq!(entries[0].uid, 0);
        assert!(entries
            .iter()
            .all(|e| NOLOGIN_SHELLS.contains(&e.shell.as_str())));
    }

    #[test]
    fn passwd_with_a_shell_and_a_broken_line() {
        let (entries, bad) = passwd(&fixture("passwd-root-shell"));
        assert_eq!(entries[0].shell, "/bin/bash");
        assert_eq!(bad, vec![3]);
    }

    #[test]
    fn shadow_passwords() {
        let s = shadow(&fixture("shadow-root-password"));
        let get = |n: &str| s.iter().find(|(x, _)| x == n).map(|(_, p)| password(p));
        assert_eq!(get("root"), Some(Password::Hash));
        assert_eq!(get("daemon"), Some(Password::Locked));
        assert_eq!(get("messagebus"), Some(Password::Locked));
        assert_eq!(get("guest"), Some(Password::Empty));
        assert_eq!(password("!$6$x$y"), Password::Locked);
    }

    #[test]
    fn socket_listeners() {
        let l = listens(&[&fixture("debug-shell.socket")]);
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].proto(), l[0].port), ("tcp", Some(2222)));
        assert_eq!((l[1].proto(), l[1].port), ("udp", Some(5353)));
        assert_eq!(l[2].port, None, "a unix socket is not a network listener");
        let journald = listens(&[&fixture("systemd-journald.socket")]);
        assert!(journald.iter().all(|x| x.port.is_none()));
    }

    #[test]
    fn drop_in_resets_listeners() {
        let l = listens(&[
            &fixture("debug-shell.socket"),
            "[Socket]\nListenStream=\nListenStream=127.0.0.1:8080\n",
        ]);
        let tcp: Vec<_> = l.iter().filter(|x| x.kind == "ListenStream").collect();
        assert_eq!(tcp.len(), 1);
        assert_eq!(tcp[0].port, Some(8080));
        assert_eq!(listen_port("[::]:22"), Some(22));
        assert_eq!(listen_port("0.0.0.0:2222"), Some(2222));
        assert_eq!(listen_port("/run/x.sock"), None);
        assert_eq!(listen_port("@abstract"), None);
    }

    #[test]
    fn sysctl_later_files_win_and_globs_apply() {
        let a = sysctl(&[
            "net.ipv4.conf.*.rp_filter = 2\n-net.ipv4.ip_forward = 1\n",
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../overlays/hardening/etc/sysctl.d/90-aperture-hardening.conf"),
            )
            .unwrap(),
        ]);
        assert_eq!(
            sysctl_value(&a, "net.ipv4.ip_forward").as_deref(),
            Some("0")
        );
        assert_eq!(
            sysctl_value(&a, "net.ipv4.conf.all.rp_filter").as_deref(),
            Some("1")
        );
        assert_eq!(
            sysctl_value(&a, "net.ipv4.conf.eth0.rp_filter").as_deref(),
            Some("2")
        );
        assert_eq!(
            sysctl_value(&a, "kernel.kptr_restrict").as_deref(),
            Some("2")
        );
        let b = sysctl(&["kernel/yama/ptrace_scope=1"]);
        assert_eq!(
            sysctl_value(&b, "kernel.yama.ptrace_scope").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn loader_entries() {
        let e = fixture("slot-a.conf");
        let o = entry_options(&e).unwrap();
        assert_eq!(
            cmdline_value(&o, "aperture.verity.roothash"),
            Some("deb070abdf0e888b7ab349b1dd914d194481a4f4c301e74fdeaaf92432c9d5a3")
        );
        assert_eq!(cmdline_value(&o, "root"), Some("/dev/mapper/aperture-root"));
        assert!(insecure_args(&o).is_empty());
        assert_eq!(
            insecure_args("ro init=/bin/sh quiet single"),
            vec!["init=/bin/sh", "single"]
        );
        assert_eq!(
            loader_conf_value("timeout 0\neditor no\n", "editor").as_deref(),
            Some("no")
        );
    }
}
