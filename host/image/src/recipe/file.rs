//! One recipe file as written (every key optional, every value with its position), the
//! `include` chain, and the merge of a chain into one set of located values.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::error::RecipeError;
use super::size::{Size, SizeValue};
use super::{Addressing, Network, Partitions, Proto, RootfsCompression, Rule, Services};

pub use aperture_appliance::Board;

type S<T> = Option<Spanned<T>>;
type L = Option<Vec<Spanned<String>>>;

/// A recipe file exactly as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    include: S<String>,
    product: S<String>,
    version: S<String>,
    security_version: S<u64>,
    board: S<Board>,
    source_date_epoch: S<u64>,
    debug: S<bool>,
    ssh: S<SshFile>,
    overlays: L,
    setuid_allowlist: L,
    base: Option<BaseFile>,
    components: Option<ComponentsFile>,
    services: Option<ServicesFile>,
    network: Option<NetworkFile>,
    partitions: Option<PartitionsFile>,
    keys: Option<KeysFile>,
    hardware: Option<HardwareFile>,
    bsp: Option<BspFile>,
    update: Option<UpdateFile>,
    runtime: Option<RuntimeFile>,
    outputs: Option<OutputsFile>,
}

/// `[outputs]`: which optional outputs the build writes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputsFile {
    compressed_disk: S<bool>,
    rootfs_compression: S<RootfsCompression>,
    bundle_level: S<i32>,
}

/// `[runtime]`: the inference runtime's model folder and cameras.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeFile {
    model: S<String>,
    camera: Option<Vec<Spanned<CameraFile>>>,
}

/// `[[runtime.camera]]`: one camera the image is built with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraFile {
    /// Its name in detections and metrics.
    pub name: String,
    /// Its stream, `rtsp://...`.
    pub url: String,
}

/// `ssh = { authorized_keys = [...] }`: an SSH server with key logins, debug images only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshFile {
    authorized_keys: L,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaseFile {
    suite: S<String>,
    mirror: S<String>,
    architecture: S<String>,
    packages: L,
    initramfs_modules: L,
    kernel_modules: L,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentsFile {
    device: L,
    runtime: L,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesFile {
    enable: L,
    mask: L,
    required: L,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    mode: S<String>,
    address: S<String>,
    gateway: S<String>,
    dns: L,
    interfaces: L,
    outbound: Option<Vec<Spanned<RuleFile>>>,
    inbound: Option<Vec<Spanned<RuleFile>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Spanned<String>,
    proto: Spanned<String>,
    port: Spanned<i64>,
    to: L,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionsFile {
    disk: S<SizeValue>,
    esp: S<SizeValue>,
    rootfs: S<SizeValue>,
    factory: S<SizeValue>,
    config: S<SizeValue>,
    data: S<SizeValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    dir: S<String>,
    development: S<bool>,
}

/// `[bsp]`: the Jetson Linux release a board's recipe is written for, pinned.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BspFile {
    release: S<String>,
    file: S<String>,
    url: S<String>,
    sha256: S<String>,
}

/// `[hardware]`: what the board has that the device programs rely on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HardwareFile {
    tpm: S<bool>,
    reset_button: S<String>,
}

/// `[update]`: the appliance's update loop and the release repository it polls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateFile {
    repository: S<String>,
    channel: S<String>,
    root: S<String>,
    ca: S<String>,
    poll_interval: S<String>,
    maintenance_window: S<String>,
    insecure_http: S<bool>,
}

/// A value with the file and position it came from, for errors.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    file: Arc<PathBuf>,
    text: Arc<String>,
    span: std::ops::Range<usize>,
}

impl<T> Located<T> {
    fn new(s: Spanned<T>, file: &Arc<PathBuf>, text: &Arc<String>) -> Self {
        let span = s.span();
        Located {
            value: s.into_inner(),
            file: file.clone(),
            text: text.clone(),
            span,
        }
    }

    /// An error at this value's position.
    pub fn error(&self, message: impl Into<String>, hint: &str) -> RecipeError {
        RecipeError::at(&self.file, &self.text, self.span.start, message, Some(hint))
    }

    /// `file:line:col` of the value.
    pub fn location(&self) -> String {
        let (line, col) = super::error::line_col(&self.text, self.span.start);
        format!("{}:{line}:{col}", self.file.display())
    }
}

impl Located<String> {
    /// The value as a path relative to the folder of the file that wrote it.
    pub fn relative_path(&self) -> PathBuf {
        let base = self.file.parent().unwrap_or(Path::new("."));
        let joined = base.join(&self.value);
        // Keep paths readable in messages and the recipe hash: drop `x/..` pairs lexically.
        let mut out = PathBuf::new();
        for c in joined.components() {
            match c {
                std::path::Component::ParentDir if out.file_name().is_some() => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }
}

/// Read a recipe and everything it includes; returns the chain with the included base first.
pub fn load_chain(path: &Path) -> Result<Vec<(PathBuf, String, RecipeFile)>, RecipeError> {
    let mut chain = Vec::new();
    let mut next = Some(path.to_path_buf());
    let mut from: Option<(PathBuf, String, usize)> = None;
    while let Some(p) = next.take() {
        if chain
            .iter()
            .any(|(q, _, _): &(PathBuf, String, RecipeFile)| same_file(q, &p))
        {
            let (f, text, at) = from.expect("a cycle needs an include");
            return Err(RecipeError::at(
                &f,
                &text,
                at,
                format!(
                    "include cycle: `{}` is already part of this recipe",
                    p.display()
                ),
                Some("remove the include that points back"),
            ));
        }
        let text = std::fs::read_to_string(&p).map_err(|e| match &from {
            Some((f, t, at)) => RecipeError::at(
                f,
                t,
                *at,
                format!("cannot read included recipe `{}`: {e}", p.display()),
                Some("include paths are relative to the including recipe"),
            ),
            None => RecipeError::whole(
                &p,
                format!("cannot read recipe: {e}"),
                Some("check the --recipe path"),
            ),
        })?;
        let parsed: RecipeFile =
            toml::from_str(&text).map_err(|e| RecipeError::from_toml(&p, &text, &e))?;
        if let Some(inc) = &parsed.include {
            let base = p.parent().unwrap_or(Path::new("."));
            next = Some(base.join(inc.get_ref()));
            from = Some((p.clone(), text.clone(), inc.span().start));
        }
        chain.push((p, text, parsed));
        if chain.len() > 8 {
            return Err(RecipeError::whole(
                path,
                "includes nest more than 8 deep",
                Some("flatten the include chain"),
            ));
        }
    }
    chain.reverse();
    Ok(chain)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Values merged over an include chain: scalars from the last file that set them, lists
/// concatenated (include first), each element keeping its own position.
#[derive(Debug, Default)]
pub struct Merged {
    pub product: Option<Located<String>>,
    pub version: Option<Located<String>>,
    pub security_version: Option<Located<u64>>,
    pub board: Option<Located<Board>>,
    pub source_date_epoch: Option<Located<u64>>,
    pub debug: Option<Located<bool>>,
    pub ssh: Option<MergedSsh>,
    pub overlays: Vec<Located<String>>,
    pub setuid_allowlist: Vec<Located<String>>,
    pub suite: Option<Located<String>>,
    pub mirror: Option<Located<String>>,
    pub architecture: Option<Located<String>>,
    pub packages: Vec<Located<String>>,
    pub initramfs_modules: Vec<Located<String>>,
    pub kernel_modules: Vec<Located<String>>,
    pub device: Vec<Located<String>>,
    pub runtime: Vec<Located<String>>,
    pub services: MergedServices,
    pub network: MergedNetwork,
    pub partitions: MergedPartitions,
    pub keys_dir: Option<Located<String>>,
    pub keys_development: Option<bool>,
    pub tpm: Option<Located<bool>>,
    pub reset_button: Option<Located<String>>,
    pub compressed_disk: Option<Located<bool>>,
    pub rootfs_compression: Option<Located<RootfsCompression>>,
    pub bundle_level: Option<Located<i32>>,
    pub bsp_release: Option<Located<String>>,
    pub bsp_file: Option<Located<String>>,
    pub bsp_url: Option<Located<String>>,
    pub bsp_sha256: Option<Located<String>>,
    pub update: MergedUpdate,
    pub runtime_model: Option<Located<String>>,
    pub cameras: Vec<Located<CameraFile>>,
}

/// `[update]`, merged.
#[derive(Debug, Default)]
pub struct MergedUpdate {
    pub repository: Option<Located<String>>,
    pub channel: Option<Located<String>>,
    pub root: Option<Located<String>>,
    pub ca: Option<Located<String>>,
    pub poll_interval: Option<Located<String>>,
    pub maintenance_window: Option<Located<String>>,
    pub insecure_http: Option<Located<bool>>,
}

/// The `ssh` table, merged: where it was (last) set, and every key of every file.
#[derive(Debug)]
pub struct MergedSsh {
    /// The table's position (for errors about the table as a whole).
    pub at: Located<()>,
    /// `authorized_keys`, concatenated.
    pub authorized_keys: Vec<Located<String>>,
}

/// Services, merged.
#[derive(Debug, Default)]
pub struct MergedServices {
    enable: Vec<Located<String>>,
    mask: Vec<Located<String>>,
    required: Vec<Located<String>>,
}

/// Network, merged.
#[derive(Debug, Default)]
pub struct MergedNetwork {
    mode: Option<Located<String>>,
    address: Option<Located<String>>,
    gateway: Option<Located<String>>,
    dns: Vec<Located<String>>,
    interfaces: Vec<Located<String>>,
    outbound: Vec<Located<RuleLocated>>,
    inbound: Vec<Located<RuleLocated>>,
}

/// A rule with each field located.
#[derive(Debug, Clone)]
pub struct RuleLocated {
    pub(super) name: Located<String>,
    pub(super) proto: Located<String>,
    pub(super) port: Located<i64>,
    pub(super) to: Vec<Located<String>>,
}

/// Partitions, merged.
#[derive(Debug, Default)]
pub struct MergedPartitions {
    disk: Option<Located<SizeValue>>,
    esp: Option<Located<SizeValue>>,
    rootfs: Option<Located<SizeValue>>,
    factory: Option<Located<SizeValue>>,
    config: Option<Located<SizeValue>>,
    data: Option<Located<SizeValue>>,
}

fn set<T>(slot: &mut Option<Located<T>>, v: S<T>, f: &Arc<PathBuf>, t: &Arc<String>) {
    if let Some(v) = v {
        *slot = Some(Located::new(v, f, t));
    }
}

fn extend(list: &mut Vec<Located<String>>, v: L, f: &Arc<PathBuf>, t: &Arc<String>) {
    for s in v.into_iter().flatten() {
        list.push(Located::new(s, f, t));
    }
}

impl Merged {
    /// Fold one file (in chain order) into the merge.
    pub fn absorb(&mut self, path: &Path, text: &str, file: RecipeFile) {
        let f = Arc::new(path.to_path_buf());
        let t = Arc::new(text.to_string());
        set(&mut self.product, file.product, &f, &t);
        set(&mut self.version, file.version, &f, &t);
        set(&mut self.security_version, file.security_version, &f, &t);
        set(&mut self.board, file.board, &f, &t);
        set(&mut self.source_date_epoch, file.source_date_epoch, &f, &t);
        set(&mut self.debug, file.debug, &f, &t);
        if let Some(ssh) = file.ssh {
            let span = ssh.span();
            let ssh = ssh.into_inner();
            let mut keys = self
                .ssh
                .take()
                .map(|m| m.authorized_keys)
                .unwrap_or_default();
            extend(&mut keys, ssh.authorized_keys, &f, &t);
            self.ssh = Some(MergedSsh {
                at: Located {
                    value: (),
                    file: f.clone(),
                    text: t.clone(),
                    span,
                },
                authorized_keys: keys,
            });
        }
        extend(&mut self.overlays, file.overlays, &f, &t);
        extend(&mut self.setuid_allowlist, file.setuid_allowlist, &f, &t);
        if let Some(b) = file.base {
            set(&mut self.suite, b.suite, &f, &t);
            set(&mut self.mirror, b.mirror, &f, &t);
            set(&mut self.architecture, b.architecture, &f, &t);
            extend(&mut self.packages, b.packages, &f, &t);
            extend(&mut self.initramfs_modules, b.initramfs_modules, &f, &t);
            extend(&mut self.kernel_modules, b.kernel_modules, &f, &t);
        }
        if let Some(c) = file.components {
            extend(&mut self.device, c.device, &f, &t);
            extend(&mut self.runtime, c.runtime, &f, &t);
        }
        if let Some(r) = file.runtime {
            set(&mut self.runtime_model, r.model, &f, &t);
            for cam in r.camera.into_iter().flatten() {
                self.cameras.push(Located::new(cam, &f, &t));
            }
        }
        if let Some(s) = file.services {
            extend(&mut self.services.enable, s.enable, &f, &t);
            extend(&mut self.services.mask, s.mask, &f, &t);
            extend(&mut self.services.required, s.required, &f, &t);
        }
        if let Some(n) = file.network {
            let net = &mut self.network;
            set(&mut net.mode, n.mode, &f, &t);
            set(&mut net.address, n.address, &f, &t);
            set(&mut net.gateway, n.gateway, &f, &t);
            if n.dns.is_some() {
                net.dns.clear();
            }
            extend(&mut net.dns, n.dns, &f, &t);
            if n.interfaces.is_some() {
                net.interfaces.clear();
            }
            extend(&mut net.interfaces, n.interfaces, &f, &t);
            for (list, rules) in [
                (&mut net.outbound, n.outbound),
                (&mut net.inbound, n.inbound),
            ] {
                for r in rules.into_iter().flatten() {
                    let span = r.span();
                    let r = r.into_inner();
                    let mut to = Vec::new();
                    extend(&mut to, r.to, &f, &t);
                    let located = RuleLocated {
                        name: Located::new(r.name, &f, &t),
                        proto: Located::new(r.proto, &f, &t),
                        port: Located::new(r.port, &f, &t),
                        to,
                    };
                    list.push(Located {
                        value: located,
                        file: f.clone(),
                        text: t.clone(),
                        span,
                    });
                }
            }
        }
        if let Some(p) = file.partitions {
            let m = &mut self.partitions;
            set(&mut m.disk, p.disk, &f, &t);
            set(&mut m.esp, p.esp, &f, &t);
            set(&mut m.rootfs, p.rootfs, &f, &t);
            set(&mut m.factory, p.factory, &f, &t);
            set(&mut m.config, p.config, &f, &t);
            set(&mut m.data, p.data, &f, &t);
        }
        if let Some(k) = file.keys {
            set(&mut self.keys_dir, k.dir, &f, &t);
            if let Some(d) = k.development {
                self.keys_development = Some(d.into_inner());
            }
        }
        if let Some(b) = file.bsp {
            set(&mut self.bsp_release, b.release, &f, &t);
            set(&mut self.bsp_file, b.file, &f, &t);
            set(&mut self.bsp_url, b.url, &f, &t);
            set(&mut self.bsp_sha256, b.sha256, &f, &t);
        }
        if let Some(u) = file.update {
            let m = &mut self.update;
            set(&mut m.repository, u.repository, &f, &t);
            set(&mut m.channel, u.channel, &f, &t);
            set(&mut m.root, u.root, &f, &t);
            set(&mut m.ca, u.ca, &f, &t);
            set(&mut m.poll_interval, u.poll_interval, &f, &t);
            set(&mut m.maintenance_window, u.maintenance_window, &f, &t);
            set(&mut m.insecure_http, u.insecure_http, &f, &t);
        }
        if let Some(h) = file.hardware {
            set(&mut self.tpm, h.tpm, &f, &t);
            set(&mut self.reset_button, h.reset_button, &f, &t);
        }
        if let Some(o) = file.outputs {
            set(&mut self.compressed_disk, o.compressed_disk, &f, &t);
            set(&mut self.rootfs_compression, o.rootfs_compression, &f, &t);
            set(&mut self.bundle_level, o.bundle_level, &f, &t);
        }
    }
}

/// systemd unit names: a name, a dot, a known unit type; nothing that could be a path.
fn validate_unit(u: &Located<String>) -> Result<(), RecipeError> {
    const TYPES: [&str; 7] = [
        ".service", ".socket", ".timer", ".target", ".mount", ".path", ".slice",
    ];
    let ok = TYPES
        .iter()
        .any(|t| u.value.ends_with(t) && u.value.len() > t.len())
        && u.value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(u.error(
            format!("`{}` is not a systemd unit name", u.value),
            "use a full unit name such as `aperture-agent.service`",
        ))
    }
}

impl MergedServices {
    /// Validate unit names and that every required unit is enabled.
    pub fn validate(&self) -> Result<Services, RecipeError> {
        for u in self.enable.iter().chain(&self.mask).chain(&self.required) {
            validate_unit(u)?;
        }
        for r in &self.required {
            if !self.enable.iter().any(|e| e.value == r.value) {
                return Err(r.error(
                    format!("required unit `{}` is not enabled", r.value),
                    "add it to services.enable, or the health gate would wait for a unit that never starts",
                ));
            }
            if self.mask.iter().any(|m| m.value == r.value) {
                return Err(r.error(
                    format!("required unit `{}` is also masked", r.value),
                    "remove it from services.mask",
                ));
            }
        }
        let v = |l: &Vec<Located<String>>| l.iter().map(|x| x.value.clone()).collect();
        Ok(Services {
            enable: v(&self.enable),
            mask: v(&self.mask),
            required: v(&self.required),
        })
    }
}

fn validate_destination(d: &Located<String>) -> Result<(), RecipeError> {
    let v = d.value.as_str();
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        return match prefix.map(|p| p.parse::<u8>()) {
            None => Ok(()),
            Some(Ok(p)) if p <= max => Ok(()),
            _ => Err(d.error(
                format!("`{v}` has an invalid prefix length"),
                &format!("use 0..={max}, e.g. 10.0.0.0/24"),
            )),
        };
    }
    let host_ok = prefix.is_none()
        && !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if host_ok {
        Ok(())
    } else {
        Err(d.error(
            format!("`{v}` is not an address, subnet or host name"),
            "e.g. \"192.168.1.0/24\" or \"fleet.example.com\"",
        ))
    }
}

fn rules(list: &[Located<RuleLocated>], inbound: bool) -> Result<Vec<Rule>, RecipeError> {
    let mut out: Vec<Rule> = Vec::new();
    for r in list {
        let x = &r.value;
        super::policy::validate_rule_name(&x.name)?;
        if inbound {
            if let Some(d) = x.to.first() {
                return Err(d.error(
                    format!("inbound rule `{}` has `to`", x.name.value),
                    "an inbound rule opens a local port to the one network; `to` names destinations of outbound rules only",
                ));
            }
        }
        let proto = match x.proto.value.as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                return Err(x.proto.error(
                    format!("unknown protocol `{other}`"),
                    "use \"tcp\" or \"udp\"",
                ))
            }
        };
        let port = u16::try_from(x.port.value)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                x.port.error(
                    format!("port {} is out of range", x.port.value),
                    "ports are 1..=65535",
                )
            })?;
        for d in &x.to {
            validate_destination(d)?;
        }
        if out.iter().any(|o| o.name == x.name.value) {
            return Err(x.name.error(
                format!("rule `{}` is defined twice", x.name.value),
                "give each rule its own name",
            ));
        }
        out.push(Rule {
            name: x.name.value.clone(),
            proto,
            port,
            to: x.to.iter().map(|d| d.value.clone()).collect(),
        });
    }
    Ok(out)
}

impl MergedNetwork {
    /// Validate addressing, interfaces and rules.
    pub fn validate(&self, top: &Path) -> Result<Network, RecipeError> {
        let addressing = match self.mode.as_ref().map(|m| m.value.as_str()) {
            None | Some("dhcp") => Addressing::Dhcp,
            Some("static") => {
                let mode = self.mode.as_ref().expect("matched Some");
                let address = self.address.as_ref().ok_or_else(|| {
                    mode.error(
                        "static addressing needs `address`",
                        "address = \"10.0.0.5/24\"",
                    )
                })?;
                super::policy::validate_ip(address, true)?;
                let gateway = self.gateway.as_ref().ok_or_else(|| {
                    mode.error(
                        "static addressing needs `gateway`",
                        "gateway = \"10.0.0.1\"",
                    )
                })?;
                super::policy::validate_ip(gateway, false)?;
                for d in &self.dns {
                    super::policy::validate_ip(d, false)?;
                }
                Addressing::Static {
                    address: address.value.clone(),
                    gateway: gateway.value.clone(),
                    dns: self.dns.iter().map(|d| d.value.clone()).collect(),
                }
            }
            Some(other) => {
                let m = self.mode.as_ref().expect("matched Some");
                return Err(m.error(
                    format!("unknown network mode `{other}`"),
                    "use \"dhcp\" or \"static\"",
                ));
            }
        };
        if self.interfaces.len() > 2 {
            return Err(self.interfaces[2].error(
                "more than two interfaces",
                "the appliance joins one network: one port, or two bonded active-backup",
            ));
        }
        super::policy::validate_interfaces(&self.interfaces)?;
        let _ = top;
        let outbound = rules(&self.outbound, false)?;
        let inbound = rules(&self.inbound, true)?;
        super::policy::validate_flows(&self.outbound, &self.inbound, &outbound)?;
        Ok(Network {
            addressing,
            interfaces: self.interfaces.iter().map(|i| i.value.clone()).collect(),
            outbound,
            inbound,
        })
    }
}

const MIB: u64 = 1024 * 1024;

impl MergedPartitions {
    /// Validate sizes: present, whole MiB, large enough, and fitting on the disk.
    pub fn validate(&self, top: &Path, board: Board) -> Result<Partitions, RecipeError> {
        let need = |v: &Option<Located<SizeValue>>, name: &str, example: &str| {
            v.clone().ok_or_else(|| {
                RecipeError::missing(
                    top,
                    &format!("partitions.{name}"),
                    &format!("[partitions] {name} = \"{example}\""),
                )
            })
        };
        let disk = need(&self.disk, "disk", "4GiB")?;
        let esp = need(&self.esp, "esp", "256MiB")?;
        let rootfs = need(&self.rootfs, "rootfs", "1GiB")?;
        let config = need(&self.config, "config", "64MiB")?;
        let data = need(&self.data, "data", "512MiB")?;
        let check = |v: &Located<SizeValue>, name: &str, min: u64| -> Result<Size, RecipeError> {
            let s = v.value.parse().map_err(|e| {
                v.error(
                    format!("partitions.{name}: {e}"),
                    "write sizes like \"256MiB\" or \"2GiB\"",
                )
            })?;
            if s.bytes() % MIB != 0 {
                return Err(v.error(
                    format!("partitions.{name} = {s} is not a whole number of MiB"),
                    "partitions are 1 MiB aligned",
                ));
            }
            if s.bytes() < min {
                return Err(v.error(
                    format!("partitions.{name} = {s} is too small"),
                    &format!("it must be at least {}", Size::new(min)),
                ));
            }
            Ok(s)
        };
        // FAT32 needs at least 65525 clusters; the qemu ESP also holds two kernels and initrds.
        let esp_s = check(&esp, "esp", 64 * MIB)?;
        let rootfs_s = check(&rootfs, "rootfs", 64 * MIB)?;
        // LUKS2's default header alone is 16 MiB.
        let config_s = check(&config, "config", 32 * MIB)?;
        let data_s = check(&data, "data", 64 * MIB)?;
        let factory_s = match &self.factory {
            Some(f) => Some(check(f, "factory", 64 * MIB)?),
            None => None,
        };
        let disk_s = check(&disk, "disk", 256 * MIB)?;
        // GPT headers and tables at both ends plus 1 MiB alignment.
        let overhead = 2 * MIB;
        let jetson_boot = if board.is_jetson() { 512 * MIB } else { 0 };
        let used = esp_s.bytes()
            + 2 * rootfs_s.bytes()
            + config_s.bytes()
            + data_s.bytes()
            + factory_s.map(|f| f.bytes()).unwrap_or(0)
            + overhead
            + jetson_boot;
        if used > disk_s.bytes() {
            return Err(disk.error(
                format!(
                    "the partitions need {} but the disk is {}",
                    Size::new(used),
                    disk_s
                ),
                "make `disk` larger or the partitions smaller (rootfs counts twice: slots A and B)",
            ));
        }
        Ok(Partitions {
            disk: disk_s,
            esp: esp_s,
            rootfs: rootfs_s,
            factory: factory_s,
            config: config_s,
            data: data_s,
        })
    }
}
