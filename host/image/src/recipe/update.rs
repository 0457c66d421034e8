//! `[update]`: the update loop's settings, checked as the appliance will check them
//! ([`aperture_release::Settings`]), with the repository's trusted TUF root and its server's CA
//! read from files next to the recipe (their contents, not their paths, are part of the
//! recipe, so a new root makes a new image).

use serde::Serialize;

use aperture_release::{Settings, Window};

use super::error::RecipeError;
use super::file::{Located, MergedUpdate};
use super::{Network, Proto};

/// The update loop an image ships with.
#[derive(Debug, Clone, Serialize)]
pub struct Update {
    /// `/etc/aperture/update.toml`.
    pub settings: Settings,
    /// The repository's trusted root (`1.root.json`, or a newer one), verbatim.
    pub root_json: String,
    /// The repository server's CA (PEM), when it is not one the system trusts.
    pub ca_pem: Option<String>,
}

/// Seconds in `15m`, `30s`, `1h`, `2d`.
fn duration(v: &Located<String>) -> Result<u64, RecipeError> {
    let bad = || {
        v.error(
            format!("poll_interval `{}` is not a duration", v.value),
            "a number and a unit: 30s, 15m, 1h",
        )
    };
    let s = v.value.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    Ok(n * mult)
}

/// Check `[update]` against the merged recipe; `top` is the outermost file, for errors about
/// missing keys.
pub fn validate(
    m: MergedUpdate,
    network: &Network,
    missing: &dyn Fn(&str, &str) -> RecipeError,
) -> Result<Option<Update>, RecipeError> {
    let any = m.repository.is_some()
        || m.channel.is_some()
        || m.root.is_some()
        || m.ca.is_some()
        || m.poll_interval.is_some()
        || m.maintenance_window.is_some()
        || m.insecure_http.is_some();
    if !any {
        return Ok(None);
    }
    let repository = m.repository.ok_or_else(|| {
        missing(
            "update.repository",
            "[update] repository = \"https://updates.example.com/fleet/\" (the folder `repo sync` \
             fills: metadata/ and targets/)",
        )
    })?;
    let channel = m
        .channel
        .ok_or_else(|| missing("update.channel", "[update] channel = \"stable\""))?;
    let root = m.root.ok_or_else(|| {
        missing(
            "update.root",
            "[update] root = \"../fleet/metadata/1.root.json\" (the repository's trusted root, \
             from `aperture repo init`)",
        )
    })?;
    let poll = match m.poll_interval {
        Some(p) => duration(&p)?,
        None => aperture_release::settings::DEFAULT_POLL_SECS,
    };
    let window = match m.maintenance_window {
        Some(w) => Some(w.value.parse::<Window>().map_err(|e| {
            w.error(
                e,
                "e.g. maintenance_window = \"02:00-04:00\" (UTC); leave it out to reboot at once",
            )
        })?),
        None => None,
    };
    let settings = Settings {
        repository: repository.value.clone(),
        channel: channel.value.clone(),
        poll_interval_secs: poll,
        maintenance_window: window,
        insecure_http: m.insecure_http.is_some_and(|i| i.value),
    };
    settings
        .check()
        .map_err(|e| repository.error(e, "see the [update] section in README.md"))?;

    let url = url::Url::parse(&repository.value).map_err(|e| {
        repository.error(
            format!("repository `{}` is not a URL: {e}", repository.value),
            "e.g. repository = \"https://updates.example.com/fleet/\"",
        )
    })?;
    let port = url.port_or_known_default().unwrap_or(443);
    let allowed = network
        .outbound
        .iter()
        .any(|r| r.proto == Proto::Tcp && r.port == port);
    if !allowed {
        return Err(repository.error(
            format!(
                "the firewall lets no TCP connection out to port {port}, so the appliance \
                 could never reach {}",
                repository.value
            ),
            &format!(
                "add [[network.outbound]] name = \"updates\", proto = \"tcp\", port = {port} (with \
                 to = [\"{}\"] to allow that host only)",
                url.host_str().unwrap_or("HOST")
            ),
        ));
    }

    let root_path = root.relative_path();
    let root_json = std::fs::read_to_string(&root_path).map_err(|e| {
        root.error(
            format!("cannot read the trusted root {}: {e}", root_path.display()),
            "point it at the repository's metadata/1.root.json (paths are relative to the recipe)",
        )
    })?;
    let doc: serde_json::Value = serde_json::from_str(&root_json).map_err(|e| {
        root.error(
            format!("{} is not JSON: {e}", root_path.display()),
            "use the repository's metadata/N.root.json, unchanged",
        )
    })?;
    if doc["signed"]["_type"] != "root" {
        return Err(root.error(
            format!("{} is not TUF root metadata", root_path.display()),
            "use the repository's metadata/N.root.json, unchanged",
        ));
    }
    let ca_pem = match m.ca {
        Some(ca) => {
            let path = ca.relative_path();
            let pem = std::fs::read_to_string(&path).map_err(|e| {
                ca.error(
                    format!("cannot read the CA certificate {}: {e}", path.display()),
                    "a PEM file with the CA that signed the repository server's certificate",
                )
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ca.error(
                    format!("{} holds no PEM certificate", path.display()),
                    "a PEM file with the CA that signed the repository server's certificate",
                ));
            }
            Some(pem)
        }
        None => None,
    };
    Ok(Some(Update {
        settings,
        root_json,
        ca_pem,
    }))
}
