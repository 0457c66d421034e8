//! The audit's checks of a rootfs commit: policy, firewall, listeners and servers, setuid and
//! world-writable files, accounts, debug tools, consoles, update timers, sysctl, mounts, SSH.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::parse::{self, Password};
use super::{firewall as fwcheck, nft, AuditReport, Finding};
use crate::security::hardening::{APT_UNITS, AUTHORIZED_KEYS_DIR};
use crate::security::setuid::{walk, Entry, Kind, SETID_BITS};
use crate::security::{firewall, Policy, POLICY};
use crate::store::{Node, Store, TreeView};

/// A network listener a unit declares, or a server program present.
#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    /// The socket unit, or the program's path.
    pub unit: String,
    /// `tcp 0.0.0.0:2222`, or `server program` for a program.
    pub listen: String,
    /// `enabled`, `disabled`, `masked`, `loopback only` or `present`.
    pub state: String,
}

/// A file of interest with its owner and mode.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// Image path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// In the setuid allowlist (setid files), or a sticky directory (world-writable).
    pub allowed: bool,
}

/// An account.
#[derive(Debug, Clone, Serialize)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Password state.
    pub password: Password,
    /// Shell.
    pub shell: String,
    /// Whether the shell gives a login.
    pub login_shell: bool,
}

/// Debug tools: the program and why it does not belong on an appliance.
const DEBUG_TOOLS: [&str; 24] = [
    "gdb",
    "gdbserver",
    "strace",
    "ltrace",
    "tcpdump",
    "tshark",
    "valgrind",
    "perf",
    "nc",
    "netcat",
    "ncat",
    "socat",
    "nmap",
    "telnet",
    "gcc",
    "cc",
    "c++",
    "g++",
    "clang",
    "rustc",
    "cargo",
    "tcc",
    "make",
    "ld",
];
/// Package managers: present in every Debian base; the appliance never runs them (apt's
/// timers are masked, the root is read-only), so their presence is a note.
const PACKAGE_MANAGERS: [&str; 5] = ["apt", "apt-get", "dpkg", "pip", "pip3"];
/// Network server programs: (path, what).
const SERVERS: [(&str, &str); 18] = [
    ("/usr/sbin/sshd", "SSH server"),
    ("/usr/sbin/dropbear", "SSH server"),
    ("/usr/sbin/in.telnetd", "telnet server"),
    ("/usr/sbin/telnetd", "telnet server"),
    ("/usr/sbin/vsftpd", "FTP server"),
    ("/usr/sbin/proftpd", "FTP server"),
    ("/usr/sbin/inetd", "inetd"),
    ("/usr/sbin/xinetd", "inetd"),
    ("/usr/sbin/rpcbind", "RPC portmapper"),
    ("/usr/sbin/avahi-daemon", "mDNS responder"),
    ("/usr/sbin/smbd", "SMB server"),
    ("/usr/sbin/nginx", "web server"),
    ("/usr/sbin/apache2", "web server"),
    ("/usr/sbin/lighttpd", "web server"),
    ("/usr/sbin/cupsd", "print server"),
    ("/usr/sbin/snmpd", "SNMP agent"),
    ("/usr/sbin/dnsmasq", "DNS/DHCP server"),
    ("/usr/sbin/mosquitto", "MQTT broker"),
];
/// Kernel settings the hardening overlay sets: (key, required, exact); not exact means "at
/// least".
const SYSCTL: [(&str, u32, bool); 14] = [
    ("kernel.kptr_restrict", 1, false),
    ("kernel.dmesg_restrict", 1, true),
    ("kernel.unprivileged_bpf_disabled", 1, false),
    ("kernel.yama.ptrace_scope", 1, false),
    ("kernel.kexec_load_disabled", 1, true),
    ("fs.protected_symlinks", 1, true),
    ("fs.protected_hardlinks", 1, true),
    ("fs.suid_dumpable", 0, true),
    ("net.ipv4.ip_forward", 0, true),
    ("net.ipv6.conf.all.forwarding", 0, true),
    ("net.ipv4.conf.all.rp_filter", 1, true),
    ("net.ipv4.conf.all.accept_redirects", 0, true),
    ("net.ipv6.conf.all.accept_redirects", 0, true),
    ("net.ipv4.conf.all.send_redirects", 0, true),
];

const UNIT_DIRS: [&str; 2] = ["/etc/systemd/system", "/usr/lib/systemd/system"];

/// The commit, walked once.
pub(super) struct Image<'a> {
    store: &'a Store,
    view: TreeView<'a>,
    entries: BTreeMap<String, Entry>,
    owners: HashMap<String, String>,
}

impl<'a> Image<'a> {
    pub(super) fn load(store: &'a Store, commit: &str) -> Result<Self> {
        let view = TreeView::new(store, commit)?;
        let mut entries = BTreeMap::new();
        walk(store, &store.root(commit)?, &mut |e| {
            entries.insert(e.path.clone(), e.clone());
            Ok(())
        })?;
        let mut img = Image {
            store,
            view,
            entries,
            owners: HashMap::new(),
        };
        img.owners = img.package_owners()?;
        Ok(img)
    }

    /// A file's text, following symlinks inside the image; `None` if absent.
    pub(super) fn read(&self, path: &str) -> Result<Option<String>> {
        match self.view.lookup(Path::new(path), true)? {
            Some(f) => match f.node {
                Node::File(ck) => Ok(Some(
                    String::from_utf8_lossy(&self.store.read_file(&ck, 16 << 20)?).into_owned(),
                )),
                Node::Dir { .. } => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The canonical path of `path` (symlinks followed), if it exists.
    fn resolve(&self, path: &str) -> Result<Option<String>> {
        Ok(self
            .view
            .lookup(Path::new(path), true)?
            .map(|f| format!("/{}", f.path.display())))
    }

    /// Which Debian package ships each path (dpkg's `/var/lib/dpkg/info/*.list`), for fixes
    /// that name the package to remove. Merged-/usr paths are recorded under both names.
    fn package_owners(&self) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        for path in self
            .entries
            .keys()
            .filter(|p| p.starts_with("/var/lib/dpkg/info/") && p.ends_with(".list"))
        {
            let pkg = path
                .trim_start_matches("/var/lib/dpkg/info/")
                .trim_end_matches(".list");
            let pkg = pkg.split(':').next().unwrap_or(pkg).to_string();
            for l in self.read(path)?.unwrap_or_default().lines() {
                for p in [l.to_string(), format!("/usr{l}")] {
                    out.entry(p).or_insert_with(|| pkg.clone());
                }
            }
        }
        Ok(out)
    }

    fn package_of(&self, path: &str) -> String {
        self.owners
            .get(path)
            .map(|p| format!("package `{p}`"))
            .unwrap_or_else(|| "an overlay or a program".into())
    }

    fn is_symlink_to(&self, path: &str, target: &str) -> bool {
        matches!(self.entries.get(path), Some(Entry { kind: Kind::Symlink(t), .. }) if t == target)
    }

    /// Masked: a `/dev/null` link in a unit folder, for the unit or its template.
    fn masked(&self, unit: &str) -> bool {
        let mut names = vec![unit.to_string()];
        if let Some((pre, rest)) = unit.split_once('@') {
            if let Some((_, ext)) = rest.rsplit_once('.') {
                names.push(format!("{pre}@.{ext}"));
            }
        }
        names.iter().any(|n| {
            UNIT_DIRS
                .iter()
                .any(|d| self.is_symlink_to(&format!("{d}/{n}"), "/dev/null"))
        })
    }

    /// Enabled: a `.wants`/`.requires` link of that name in a unit folder, and not masked.
    fn enabled(&self, unit: &str) -> bool {
        !self.masked(unit)
            && self.entries.keys().any(|p| {
                UNIT_DIRS.iter().any(|d| {
                    p.strip_prefix(d)
                        .and_then(|r| r.strip_prefix('/'))
                        .is_some_and(|r| {
                            r.split_once('/').is_some_and(|(dir, name)| {
                                (dir.ends_with(".wants") || dir.ends_with(".requires"))
                                    && name == unit
                            })
                        })
                })
            })
    }

    fn unit_exists(&self, unit: &str) -> bool {
        UNIT_DIRS
            .iter()
            .any(|d| self.entries.contains_key(&format!("{d}/{unit}")))
    }
}

/// Run every rootfs check.
pub(super) fn audit(store: &Store, commit: &str, given: Option<&Policy>) -> Result<AuditReport> {
    let img = Image::load(store, commit)?;
    let mut f: Vec<Finding> = Vec::new();
    let (policy, policy_source) = policy(&img, given, &mut f)?;
    let mut r = AuditReport {
        dir: None,
        commit: commit.to_string(),
        policy: Some(policy.clone()),
        policy_source,
        firewall: None,
        listeners: Vec::new(),
        setid_files: Vec::new(),
        world_writable: Vec::new(),
        accounts: Vec::new(),
        debug_tools: Vec::new(),
        boot_entries: Vec::new(),
        outputs: Vec::new(),
        findings: Vec::new(),
    };
    firewall_check(&img, &policy, &mut r, &mut f)?;
    listeners(&img, &policy, &mut r, &mut f)?;
    files(&img, &policy, &mut r, &mut f)?;
    accounts(&img, &policy, &mut r, &mut f)?;
    tools(&img, &policy, &mut r, &mut f);
    services(&img, &policy, &mut f);
    system(&img, &policy, &mut f)?;
    disk_keys(&img, &mut f)?;
    r.findings = f;
    Ok(r)
}

fn policy(
    img: &Image<'_>,
    given: Option<&Policy>,
    f: &mut Vec<Finding>,
) -> Result<(Policy, String)> {
    let stored: Option<Policy> = match img.read(POLICY)? {
        Some(t) => match serde_json::from_str(&t) {
            Ok(p) => Some(p),
            Err(e) => {
                f.push(Finding::violation(
                    "policy",
                    format!("/{POLICY}"),
                    format!("does not parse: {e}"),
                    "rebuild the image; the build writes this file from the recipe",
                ));
                None
            }
        },
        None => {
            f.push(Finding::violation(
                "policy",
                format!("/{POLICY}"),
                "the image carries no security policy: it was not built with the security baseline",
                "rebuild the image with this version of Aperture",
            ));
            None
        }
    };
    match (given, stored) {
        (Some(g), Some(s)) => {
            if *g != s {
                f.push(Finding::violation(
                    "policy",
                    format!("/{POLICY}"),
                    "the policy in the image differs from the recipe's",
                    "rebuild the image from this recipe",
                ));
            }
            Ok((g.clone(), "the recipe".into()))
        }
        (Some(g), None) => Ok((g.clone(), "the recipe".into())),
        (None, Some(s)) => Ok((s, format!("the image's /{POLICY}"))),
        // Nothing to go by: the strictest policy (no flows, nothing allowlisted, no debug).
        (None, None) => Ok((
            Policy {
                format: 1,
                debug: false,
                console: String::new(),
                ssh: false,
                setuid_allowlist: vec![],
                inbound: vec![],
                outbound: vec![],
            },
            "none found: judged against the strictest policy".into(),
        )),
    }
}

fn firewall_check(
    img: &Image<'_>,
    policy: &Policy,
    r: &mut AuditReport,
    f: &mut Vec<Finding>,
) -> Result<()> {
    let conf = format!("/{}", firewall::CONF);
    match img.read(&conf)? {
        None => f.push(Finding::violation(
            "firewall",
            &conf,
            "the image has no firewall ruleset",
            "rebuild the image; the build generates it from the recipe's [network] flows",
        )),
        Some(text) => {
            let (sum, mut found) = fwcheck::judge(&nft::parse(&text), policy);
            r.firewall = Some(sum);
            f.append(&mut found);
        }
    }
    if !img.enabled("nftables.service") {
        f.push(Finding::violation("firewall", "nftables.service", "is not enabled (or is masked): the firewall would not be loaded at boot", "keep the `nftables` package in the recipe and do not mask nftables.service; the build enables it"));
    }
    Ok(())
}

fn is_loopback(addr: &str) -> bool {
    addr.starts_with("127.") || addr.starts_with("[::1]") || addr.starts_with("localhost")
}

fn listeners(
    img: &Image<'_>,
    policy: &Policy,
    r: &mut AuditReport,
    f: &mut Vec<Finding>,
) -> Result<()> {
    // Socket units by name: /etc wins over /usr/lib (systemd.unit(5) "Unit File Load Path").
    let mut sockets: BTreeMap<String, String> = BTreeMap::new();
    for d in UNIT_DIRS.iter().rev() {
        for (p, e) in img.entries.range(format!("{d}/")..) {
            let Some(name) = p.strip_prefix(&format!("{d}/")) else {
                break;
            };
            if name.contains('/') || !name.ends_with(".socket") || name.contains("@.") {
                continue;
            }
            if matches!(&e.kind, Kind::Symlink(t) if t == "/dev/null") {
                continue;
            }
            sockets.insert(name.to_string(), p.clone());
        }
    }
    for (unit, path) in sockets {
        let mut texts = vec![img.read(&path)?.unwrap_or_default()];
        for d in UNIT_DIRS {
            let dropins = format!("{d}/{unit}.d/");
            for p in img
                .entries
                .range(dropins.clone()..)
                .map(|(p, _)| p)
                .take_while(|p| p.starts_with(&dropins))
            {
                if p.ends_with(".conf") {
                    texts.push(img.read(p)?.unwrap_or_default());
                }
            }
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        for l in parse::listens(&refs) {
            let Some(port) = l.port else { continue };
            let enabled = img.enabled(&unit);
            let state = if img.masked(&unit) {
                "masked"
            } else if is_loopback(&l.address) {
                "loopback only"
            } else if enabled {
                "enabled"
            } else {
                "disabled"
            };
            let listen = format!("{} {}", l.proto(), l.address);
            let allowed = policy
                .inbound
                .iter()
                .any(|fl| format!("{:?}", fl.proto).to_lowercase() == l.proto() && fl.port == port);
            if state == "enabled" && !allowed {
                f.push(Finding::violation("listeners", &unit, format!("listens on {listen} (port {port}), which no inbound flow of the policy allows"), format!("remove the unit or its enablement (services.enable, or the overlay's .wants link); if the appliance must serve it, add [[network.inbound]] name = \"...\", proto = \"{}\", port = {port}", l.proto())));
            } else if state == "disabled" && !allowed {
                f.push(Finding::note(
                    "listeners",
                    &unit,
                    format!("would listen on {listen} but is not enabled"),
                    "remove it if nothing enables it on purpose",
                ));
            }
            r.listeners.push(Listener {
                unit: unit.clone(),
                listen,
                state: state.into(),
            });
        }
    }
    for (path, what) in SERVERS {
        let Some(real) = img.resolve(path)? else {
            continue;
        };
        r.listeners.push(Listener {
            unit: path.into(),
            listen: format!("{what} program"),
            state: "present".into(),
        });
        let ssh = path.ends_with("sshd") && path.starts_with("/usr/sbin/sshd");
        if ssh && policy.ssh {
            continue;
        }
        let pkg = img.package_of(&real);
        let fix = if ssh {
            format!("remove {pkg} from the recipe, or make it a debug recipe (debug = true) with ssh = {{ authorized_keys = [...] }}")
        } else {
            format!("remove {pkg} from the recipe")
        };
        if ssh || policy.inbound.is_empty() {
            f.push(Finding::violation(
                "listeners",
                path,
                format!("a {what} is installed, which the policy does not provide for"),
                fix,
            ));
        } else {
            f.push(Finding::note(
                "listeners",
                path,
                format!("a {what} is installed; check that the inbound flows are meant for it"),
                fix,
            ));
        }
    }
    Ok(())
}

fn files(
    img: &Image<'_>,
    policy: &Policy,
    r: &mut AuditReport,
    f: &mut Vec<Finding>,
) -> Result<()> {
    let mut allowed = Vec::new();
    for a in &policy.setuid_allowlist {
        allowed.push(a.clone());
        if let Some(p) = img.resolve(a)? {
            allowed.push(p);
        }
    }
    for e in img.entries.values() {
        let is_file = matches!(e.kind, Kind::File(_));
        if is_file && e.mode & SETID_BITS != 0 {
            let ok = allowed.contains(&e.path);
            r.setid_files.push(FileInfo {
                path: e.path.clone(),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                allowed: ok,
            });
            if !ok {
                let bits = match (e.mode & 0o4000 != 0, e.mode & 0o2000 != 0) {
                    (true, true) => "setuid and setgid",
                    (true, false) => "setuid",
                    _ => "setgid",
                };
                f.push(Finding::violation("setuid", &e.path, format!("is {bits} (mode {:04o}, owner {}:{}) and not in the policy's setuid_allowlist; it comes from {}", e.mode, e.uid, e.gid, img.package_of(&e.path)), format!("clear the bit (the build does this for base files; an overlay must ship it without: chmod u-s,g-s), or if the appliance needs it add \"{}\" to setuid_allowlist", e.path)));
            }
        }
        let is_dir = e.kind == Kind::Dir;
        if (is_file || is_dir) && e.mode & 0o002 != 0 {
            let sticky = is_dir && e.mode & 0o1000 != 0;
            r.world_writable.push(FileInfo {
                path: e.path.clone(),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                allowed: sticky,
            });
            if !sticky {
                f.push(Finding::violation("world-writable", &e.path, format!("is a world-writable {} (mode {:04o})", if is_dir { "directory without the sticky bit" } else { "file" }, e.mode), "remove write permission for others (chmod o-w) in the overlay or recipe that brings it"));
            }
        }
    }
    Ok(())
}

fn accounts(
    img: &Image<'_>,
    policy: &Policy,
    r: &mut AuditReport,
    f: &mut Vec<Finding>,
) -> Result<()> {
    let Some(pw) = img.read("/etc/passwd")? else {
        f.push(Finding::violation(
            "accounts",
            "/etc/passwd",
            "is missing",
            "rebuild from a Debian base",
        ));
        return Ok(());
    };
    let shadow = img.read("/etc/shadow")?;
    if shadow.is_none() {
        f.push(Finding::violation(
            "accounts",
            "/etc/shadow",
            "is missing: passwords cannot be checked",
            "rebuild from a Debian base; do not remove /etc/shadow in an overlay",
        ));
    }
    let shadow = parse::shadow(&shadow.unwrap_or_default());
    let (entries, bad) = parse::passwd(&pw);
    for line in bad {
        f.push(Finding::violation(
            "accounts",
            "/etc/passwd",
            format!("line {line} is not a passwd(5) entry"),
            "fix or remove the overlay's /etc/passwd",
        ));
    }
    for e in entries {
        let password = match e.password.as_str() {
            "x" => shadow
                .iter()
                .find(|(n, _)| *n == e.name)
                .map(|(_, p)| parse::password(p))
                .unwrap_or(Password::Locked),
            other => parse::password(other),
        };
        let login_shell = !parse::NOLOGIN_SHELLS.contains(&e.shell.as_str());
        match password {
            Password::Locked => {}
            Password::Empty => f.push(Finding::violation("accounts", &e.name, "has an empty password: it logs in without one", format!("lock it: `{}:*:...` in /etc/shadow (and `x` in /etc/passwd); the base image's accounts are locked, so an overlay's passwd or shadow brought this", e.name))),
            Password::Hash => f.push(Finding::violation("accounts", &e.name, "has a password: the appliance allows no password logins", format!("lock it: replace the hash with `*` (`{}:*:...`) in the overlay's /etc/shadow, or drop the overlay's shadow to keep the base's", e.name))),
        }
        let root_debug = policy.debug && e.name == "root";
        if login_shell && !root_debug {
            f.push(Finding::violation("accounts", &e.name, format!("has the login shell {}", e.shell), format!("set its shell to /usr/sbin/nologin (the build does this for the base's /etc/passwd; an overlay's passwd must do it itself){}", if e.name == "root" { ", or make it a debug recipe (debug = true)" } else { "" })));
        }
        r.accounts.push(Account {
            name: e.name,
            uid: e.uid,
            password,
            shell: e.shell,
            login_shell,
        });
    }
    Ok(())
}

fn tools(img: &Image<'_>, policy: &Policy, r: &mut AuditReport, f: &mut Vec<Finding>) {
    for t in DEBUG_TOOLS.iter().chain(PACKAGE_MANAGERS.iter()) {
        let Some(path) = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .map(|d| format!("{d}/{t}"))
            .find(|p| img.view.lookup(Path::new(p), true).ok().flatten().is_some())
        else {
            continue;
        };
        r.debug_tools.push(path.clone());
        let real = img.resolve(&path).ok().flatten().unwrap_or(path.clone());
        let pkg = img.package_of(&real);
        if PACKAGE_MANAGERS.contains(t) {
            f.push(Finding::note("debug-tools", &path, "a package manager is present; the appliance never runs it (read-only root, apt timers masked, aperture-update updates)", format!("nothing to do; it comes from {pkg}")));
        } else if policy.debug {
            f.push(Finding::note(
                "debug-tools",
                &path,
                format!("a debug tool from {pkg}, tolerated in a debug image"),
                "keep it out of production recipes",
            ));
        } else {
            f.push(Finding::violation(
                "debug-tools",
                &path,
                format!("a debug tool from {pkg} in a production image"),
                format!("remove {pkg} from the recipe, or build a debug recipe (debug = true)"),
            ));
        }
    }
}

fn services(img: &Image<'_>, policy: &Policy, f: &mut Vec<Finding>) {
    if !policy.debug {
        for u in [
            "getty@.service",
            "serial-getty@.service",
            "autovt@.service",
            "console-getty.service",
        ] {
            if img.unit_exists(u) && !img.masked(u) {
                f.push(Finding::violation("consoles", u, "is not masked: a production image offers no login prompt", "rebuild with this version of Aperture (the build masks every getty unless debug = true); do not ship a getty in an overlay"));
            }
        }
    }
    for u in APT_UNITS {
        if img.unit_exists(u) && !img.masked(u) {
            f.push(Finding::violation(
                "updates",
                u,
                "is not masked: only aperture-update may change the appliance",
                "rebuild with this version of Aperture (the build masks apt's and dpkg's timers)",
            ));
        }
    }
}

/// How the disk keys are protected, from the image's own facts: sealed to a TPM, or (where the
/// recipe says the board has none) stored unsealed, which the audit reports.
fn disk_keys(img: &Image<'_>, f: &mut Vec<Finding>) -> Result<()> {
    let path = aperture_appliance::files::rel::BUILD_FACTS;
    let Some(text) = img.read(path)? else {
        f.push(Finding::violation(
            "keys",
            format!("/{path}"),
            "the image has no build facts, so its programs cannot tell their board",
            "rebuild the image with this version of Aperture",
        ));
        return Ok(());
    };
    match aperture_appliance::BuildFacts::parse(text.as_bytes()) {
        Ok(facts) if !facts.tpm => f.push(Finding::note(
            "keys",
            format!("/{path}"),
            format!(
                "the recipe says {} has no TPM ([hardware] tpm = false): the disk keys of config and data are stored unsealed and do not protect them if the device is stolen",
                facts.board
            ),
            "give the board a TPM 2.0 (a discrete TPM, or the Orin's firmware TPM) and set [hardware] tpm = true",
        )),
        Ok(_) => {}
        Err(e) => f.push(Finding::violation(
            "keys",
            format!("/{path}"),
            format!("does not parse: {e}"),
            "rebuild the image; the build writes this file from the recipe",
        )),
    }
    Ok(())
}

fn system(img: &Image<'_>, policy: &Policy, f: &mut Vec<Finding>) -> Result<()> {
    // sysctl.d in systemd-sysctl's order: by file name across folders, /etc shadowing /usr/lib.
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for d in ["/usr/lib/sysctl.d", "/etc/sysctl.d"] {
        for p in img
            .entries
            .keys()
            .filter(|p| p.starts_with(&format!("{d}/")) && p.ends_with(".conf"))
        {
            by_name.insert(p.rsplit('/').next().unwrap_or("").to_string(), p.clone());
        }
    }
    let mut texts = Vec::new();
    for p in by_name.values() {
        if let Some(t) = img.read(p)? {
            texts.push(t);
        }
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let assignments = parse::sysctl(&refs);
    for (key, want, exact) in SYSCTL {
        let got = parse::sysctl_value(&assignments, key);
        let ok = got
            .as_deref()
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|v| if exact { v == want } else { v >= want });
        if !ok {
            f.push(Finding::violation("sysctl", key, format!("is {} in the image's sysctl.d; the hardening baseline needs {}{want}", got.as_deref().unwrap_or("not set"), if exact { "" } else { "at least " }), "include overlays/hardening in the recipe's overlays, and do not override it in a later overlay"));
        }
    }
    let fstab = img.read("/etc/fstab")?.unwrap_or_default();
    let tmp = fstab
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|w| w.len() >= 3 && w[1] == "/tmp" && w[2] == "tmpfs");
    if !tmp {
        f.push(Finding::violation(
            "mounts",
            "/etc/fstab",
            "mounts no tmpfs on /tmp",
            "rebuild the image; the build writes /etc/fstab with /tmp on tmpfs",
        ));
    }
    if policy.ssh {
        let conf = img
            .read("/etc/ssh/sshd_config.d/50-aperture.conf")?
            .unwrap_or_default();
        if !conf.contains("PasswordAuthentication no")
            || !conf.contains("AuthenticationMethods publickey")
        {
            f.push(Finding::violation(
                "ssh",
                "/etc/ssh/sshd_config.d/50-aperture.conf",
                "does not restrict SSH to keys",
                "rebuild the image; the build writes it for a debug recipe with ssh",
            ));
        }
        if img.read(&format!("/{AUTHORIZED_KEYS_DIR}/root"))?.is_none() {
            f.push(Finding::note(
                "ssh",
                format!("/{AUTHORIZED_KEYS_DIR}/root"),
                "no authorized keys for root: nobody can log in",
                "list keys in ssh.authorized_keys",
            ));
        }
    }
    Ok(())
}
