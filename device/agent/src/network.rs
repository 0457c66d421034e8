//! The provisioning archive's network settings (`network.toml`, issue 16) on the appliance.
//!
//! The image's one network is `/etc/systemd/network/20-aperture.network`, generated from the
//! recipe (host/image `security::network`), on the read-only root. A provisioned appliance
//! keeps the archive's settings in `/var/lib/aperture/agent/network.toml` (the encrypted data
//! partition) and, at every boot (`aperture-network.service`) and before it enrolls, writes
//! them as `/run/systemd/network/10-aperture-provisioned.network`: networkd applies the first
//! file in name order that matches a link, so this one wins over the image's.
//!
//! **Still one network.** The file's `[Match]` is copied from the image's file (the same ports,
//! or the same bond), so the archive can change how the appliance is addressed on its network
//! but not add a second one; forwarding, link-local and router-advertised addresses stay off as
//! in the image's. Every value is a parsed type or checked ([`Network::check`]) before it is
//! written, so nothing from the archive can add a line or a section.

use std::path::Path;

use anyhow::{bail, Context, Result};
use aperture_appliance::Files;
use aperture_fleet_api::provision::Network;

/// The image's networkd file (the recipe's one network), under `/etc/systemd/network`.
pub const IMAGE_FILE: &str = "20-aperture.network";
/// The file written from the provisioned settings, under `/run/systemd/network`.
pub const RUN_FILE: &str = "10-aperture-provisioned.network";

/// The `[Match]` section of the image's networkd file, its lines as written.
pub fn image_match(text: &str) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut in_match = false;
    for l in text.lines().map(str::trim) {
        if l.starts_with('[') {
            in_match = l == "[Match]";
            continue;
        }
        if in_match && !l.is_empty() && !l.starts_with('#') {
            lines.push(l.to_string());
        }
    }
    if lines.is_empty() {
        bail!("it has no [Match] section with a setting: rebuild the image");
    }
    Ok(lines)
}

/// The networkd file for `net` on the links `matches` selects (checked settings only).
pub fn render(net: &Network, matches: &[String]) -> Result<String> {
    net.check().map_err(anyhow::Error::msg)?;
    let mut s = String::from(
        "# Written by aperture-agent from the provisioning archive's network.toml: the image's\n\
         # one network (its [Match] copied from 20-aperture.network), addressed as provisioned.\n\
         [Match]\n",
    );
    for m in matches {
        s.push_str(m);
        s.push('\n');
    }
    s.push_str("\n[Network]\n");
    match &net.address {
        Some(a) => s.push_str(&format!("Address={a}\n")),
        None => s.push_str("DHCP=ipv4\n"),
    }
    if let Some(g) = net.gateway {
        s.push_str(&format!("Gateway={g}\n"));
    }
    for d in &net.dns {
        s.push_str(&format!("DNS={d}\n"));
    }
    s.push_str(
        "IPForward=no\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nLLMNR=no\nMulticastDNS=no\n",
    );
    if net.address.is_none() {
        s.push_str("\n[DHCPv4]\nClientIdentifier=mac\n");
        if !net.dns.is_empty() {
            // The provisioned servers only, not the lease's as well.
            s.push_str("UseDNS=no\n");
        }
        if net.hostname.is_some() {
            s.push_str("UseHostname=no\n");
        }
    }
    Ok(s)
}

/// Keep `net` for later boots (`/var/lib/aperture/agent/network.toml`).
pub fn persist(files: &Files, net: &Network) -> Result<()> {
    net.check().map_err(anyhow::Error::msg)?;
    let path = files.provisioned_network();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(net).context("serialising the network settings")?;
    aperture_sys::fs::write_atomic(&path, text.as_bytes(), 0o644)?;
    Ok(())
}

/// The kept settings, if any (checked again: the file could have been changed).
pub fn load(files: &Files) -> Result<Option<Network>> {
    let path = files.provisioned_network();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let net: Network = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    net.check()
        .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
    Ok(Some(net))
}

/// Write the networkd file and the host name for `net` under `files`' root; returns whether
/// the networkd file changed (then networkd must reload).
pub fn write(files: &Files, net: &Network) -> Result<bool> {
    let image = files.image_network_dir().join(IMAGE_FILE);
    let text = std::fs::read_to_string(&image)
        .with_context(|| format!("reading the image's network {}", image.display()))?;
    let matches = image_match(&text).with_context(|| format!("{}", image.display()))?;
    let file = render(net, &matches)?;
    let dir = files.run_network_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(RUN_FILE);
    let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(file.as_str());
    if changed {
        aperture_sys::fs::write_atomic(&path, file.as_bytes(), 0o644)?;
    }
    if let Some(h) = &net.hostname {
        set_hostname(&files.kernel_hostname(), h)?;
    }
    Ok(changed)
}

fn set_hostname(path: &Path, name: &str) -> Result<()> {
    std::fs::write(path, name)
        .with_context(|| format!("setting the host name in {}", path.display()))
}

/// Apply `net` on this appliance: write the files, then have networkd reload them.
pub fn apply(files: &Files, net: &Network) -> Result<()> {
    if write(files, net)? {
        aperture_sys::Cmd::new("networkctl")
            .arg("reload")
            .run()
            .context("having systemd-networkd reload the provisioned network")?;
    }
    let how = net.address.as_deref().unwrap_or("DHCP");
    tracing::info!("network: the provisioned settings applied ({how})");
    Ok(())
}

/// `aperture-agent network`: apply the kept settings at boot, if the appliance has any.
pub fn apply_kept(files: &Files) -> Result<()> {
    match load(files)? {
        Some(net) => apply(files, &net),
        None => {
            println!("no provisioned network settings: the image's network applies");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "# Generated by Aperture: the appliance's one network.\n[Match]\n\
                         Name=bond0\n\n[Network]\nDHCP=ipv4\nIPForward=no\n";

    fn static_net() -> Network {
        Network {
            hostname: Some("cam-7".into()),
            address: Some("192.0.2.10/24".into()),
            gateway: Some("192.0.2.1".parse().unwrap()),
            dns: vec!["192.0.2.53".parse().unwrap()],
        }
    }

    #[test]
    fn the_image_match_is_kept_and_a_static_address_replaces_dhcp() {
        let m = image_match(IMAGE).unwrap();
        assert_eq!(m, ["Name=bond0"]);
        let t = render(&static_net(), &m).unwrap();
        assert!(t.contains("[Match]\nName=bond0\n\n[Network]\n"), "{t}");
        assert!(
            t.contains("Address=192.0.2.10/24\nGateway=192.0.2.1\nDNS=192.0.2.53\n"),
            "{t}"
        );
        assert!(t.contains("IPForward=no\n") && !t.contains("DHCP"), "{t}");
        assert_eq!(t.lines().filter(|l| *l == "[Match]").count(), 1);
    }

    #[test]
    fn dhcp_with_provisioned_dns_ignores_the_leases_dns() {
        let net = Network {
            dns: vec!["192.0.2.53".parse().unwrap()],
            ..Network::default()
        };
        let t = render(&net, &["Type=ether".into()]).unwrap();
        assert!(
            t.contains("DHCP=ipv4\n") && t.contains("UseDNS=no\n"),
            "{t}"
        );
    }

    #[test]
    fn bad_settings_and_an_image_without_a_match_are_refused() {
        let bad = Network {
            address: Some("192.0.2.10/24\n[Network]\nIPForward=yes".into()),
            ..Network::default()
        };
        assert!(render(&bad, &["Type=ether".into()]).is_err());
        let bad = Network {
            hostname: Some("a\nb".into()),
            ..Network::default()
        };
        assert!(render(&bad, &["Type=ether".into()]).is_err());
        let e = image_match("[Network]\nDHCP=ipv4\n").unwrap_err();
        assert!(format!("{e}").contains("[Match]"), "{e}");
    }

    #[test]
    fn kept_settings_are_written_under_run_with_the_host_name() {
        let tmp = tempfile::tempdir().unwrap();
        let files = Files::at(tmp.path());
        std::fs::create_dir_all(files.image_network_dir()).unwrap();
        std::fs::write(files.image_network_dir().join(IMAGE_FILE), IMAGE).unwrap();
        std::fs::create_dir_all(files.kernel_hostname().parent().unwrap()).unwrap();
        assert!(load(&files).unwrap().is_none());
        persist(&files, &static_net()).unwrap();
        let net = load(&files).unwrap().unwrap();
        assert_eq!(net, static_net());
        assert!(write(&files, &net).unwrap());
        assert!(!write(&files, &net).unwrap(), "unchanged: no reload");
        let run = std::fs::read_to_string(files.run_network_dir().join(RUN_FILE)).unwrap();
        assert!(run.contains("Name=bond0") && run.contains("Address=192.0.2.10/24"));
        assert_eq!(
            std::fs::read_to_string(files.kernel_hostname()).unwrap(),
            "cam-7"
        );
        // A kept file changed by hand is checked again.
        std::fs::write(
            files.provisioned_network(),
            "dns = [\"1.1.1.1\", \"1.1.1.1\", \"1.1.1.1\", \"1.1.1.1\", \"1.1.1.1\"]\n",
        )
        .unwrap();
        assert!(format!("{:#}", load(&files).unwrap_err()).contains("at most 4"));
    }
}
