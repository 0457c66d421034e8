//! Validation of a recipe's security keys: flow names (they name firewall sets and counters),
//! interfaces and static addresses, what host names need, the setuid allowlist and `ssh`.
//!
//! Every check answers with the file, line and column of the offending value and a hint, like
//! the rest of the recipe model.

use std::collections::BTreeMap;

use super::error::RecipeError;
use super::file::{Located, MergedSsh, RuleLocated};
use super::{Rule, Ssh};

/// Name of the outbound flow a DHCP recipe gets implicitly: lease renewals to the server's
/// port 67 (the first exchange uses a packet socket, which netfilter does not see).
pub const DHCP_RULE: &str = "dhcp-client";
/// Name of the inbound flow a debug recipe with `ssh` gets implicitly: TCP port 22.
pub const SSH_RULE: &str = "ssh-debug";

/// The active-backup bond the image makes when the recipe lists two interfaces.
pub const BOND: &str = "bond0";

/// The package that provides the SSH server `ssh` configures.
pub const SSH_PACKAGE: &str = "openssh-server";

/// Key types accepted in `ssh.authorized_keys` (OpenSSH's sshd(8) "AUTHORIZED_KEYS FILE
/// FORMAT"; DSA is gone from OpenSSH 9 and refused here too).
const KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
];

/// Whether a flow destination is a host name (resolved at boot) rather than an address or
/// subnet. Call on validated destinations only.
pub fn is_host_name(dest: &str) -> bool {
    let addr = dest.split_once('/').map(|(a, _)| a).unwrap_or(dest);
    addr.parse::<std::net::IpAddr>().is_err()
}

/// Flow names become nftables counter and set names (`out_<name>`, `<name>_hosts_v4`) and the
/// comments the audit reads back, so they are short identifiers.
pub(super) fn validate_rule_name(n: &Located<String>) -> Result<(), RecipeError> {
    let v = &n.value;
    let ok = !v.is_empty()
        && v.len() <= 24
        && v.starts_with(|c: char| c.is_ascii_lowercase())
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(n.error(
            format!("flow name `{v}` is not allowed"),
            "use up to 24 lowercase letters, digits, '-' and '_', starting with a letter (it names firewall counters and sets)",
        ))
    }
}

/// A static address (`with_prefix`: `10.0.0.5/24`) or a gateway or DNS server (a plain address).
pub(super) fn validate_ip(v: &Located<String>, with_prefix: bool) -> Result<(), RecipeError> {
    let s = v.value.as_str();
    let ok = match (s.split_once('/'), with_prefix) {
        (Some((a, p)), true) => match a.parse::<std::net::IpAddr>() {
            Ok(ip) => p
                .parse::<u8>()
                .is_ok_and(|p| p <= if ip.is_ipv4() { 32 } else { 128 }),
            Err(_) => false,
        },
        (None, false) => s.parse::<std::net::IpAddr>().is_ok(),
        _ => false,
    };
    if ok {
        Ok(())
    } else if with_prefix {
        Err(v.error(
            format!("`{s}` is not an address with a prefix length"),
            "e.g. address = \"10.0.0.5/24\"",
        ))
    } else {
        Err(v.error(
            format!("`{s}` is not an IP address"),
            "gateways and DNS servers are plain addresses, e.g. \"10.0.0.1\"",
        ))
    }
}

/// Interface names (or systemd-networkd `Name=` globs): valid, distinct, and not the bond the
/// image makes of two ports.
pub(super) fn validate_interfaces(list: &[Located<String>]) -> Result<(), RecipeError> {
    let mut seen: BTreeMap<&str, &Located<String>> = BTreeMap::new();
    for i in list {
        let v = i.value.as_str();
        let ok = !v.is_empty()
            && v.len() <= 15
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.*?[]".contains(c));
        if !ok {
            return Err(i.error(
                format!("`{v}` is not a network interface name"),
                "use a kernel interface name of up to 15 characters, e.g. \"enp1s0\" (globs like \"en*\" are allowed)",
            ));
        }
        if v == BOND {
            return Err(i.error(
                format!("`{v}` is the bond the image creates for two ports"),
                "list the Ethernet ports themselves",
            ));
        }
        if let Some(first) = seen.get(v) {
            return Err(i.error(
                format!("interface `{v}` is listed twice"),
                &format!("remove one; it is first listed at {}", first.location()),
            ));
        }
        seen.insert(v, i);
    }
    Ok(())
}

/// Flows across both lists: reserved names, and host names need DNS to resolve them.
pub(super) fn validate_flows(
    outbound_l: &[Located<RuleLocated>],
    inbound_l: &[Located<RuleLocated>],
    outbound: &[Rule],
) -> Result<(), RecipeError> {
    for r in outbound_l.iter().chain(inbound_l) {
        let n = &r.value.name;
        if n.value == DHCP_RULE || n.value == SSH_RULE {
            return Err(n.error(
                format!("flow name `{}` is reserved", n.value),
                &format!("the image adds `{DHCP_RULE}` (DHCP recipes) and `{SSH_RULE}` (debug recipes with ssh) itself; choose another name"),
            ));
        }
    }
    let dns = outbound
        .iter()
        .any(|r| r.port == 53 || (r.port == 853 && r.proto == super::Proto::Tcp));
    if !dns {
        for r in outbound_l {
            if let Some(h) = r.value.to.iter().find(|d| is_host_name(&d.value)) {
                return Err(h.error(
                    format!(
                        "flow `{}` names the host `{}`, but no outbound flow allows DNS to resolve it",
                        r.value.name.value, h.value
                    ),
                    "add [[network.outbound]] name = \"dns\", proto = \"udp\", port = 53",
                ));
            }
        }
    }
    Ok(())
}

/// The setuid allowlist: absolute, normalised image paths, each once.
pub(super) fn validate_allowlist(list: &[Located<String>]) -> Result<Vec<String>, RecipeError> {
    let mut seen: BTreeMap<&str, &Located<String>> = BTreeMap::new();
    for p in list {
        let v = p.value.as_str();
        let ok = v.starts_with('/')
            && v.len() > 1
            && !v.ends_with('/')
            && v[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && !v.chars().any(|c| c.is_control() || c.is_whitespace());
        if !ok {
            return Err(p.error(
                format!("setuid_allowlist entry `{v}` is not an absolute, normalised path"),
                "write the path as the image sees it, e.g. \"/usr/bin/ping\"",
            ));
        }
        if let Some(first) = seen.get(v) {
            return Err(p.error(
                format!("setuid_allowlist lists `{v}` twice"),
                &format!("remove one; it is first listed at {}", first.location()),
            ));
        }
        seen.insert(v, p);
    }
    Ok(list.iter().map(|p| p.value.clone()).collect())
}

/// `ssh`: only in debug images, only with the server installed, only key logins.
pub(super) fn validate_ssh(
    ssh: Option<&MergedSsh>,
    debug: bool,
    packages: &[Located<String>],
) -> Result<Option<Ssh>, RecipeError> {
    let Some(ssh) = ssh else {
        return Ok(None);
    };
    if !debug {
        return Err(ssh.at.error(
            "`ssh` is set but the recipe is not a debug recipe",
            "a production appliance runs no SSH server; set `debug = true` in a debug recipe, or remove `ssh`",
        ));
    }
    if !packages.iter().any(|p| p.value == SSH_PACKAGE) {
        return Err(ssh.at.error(
            format!("`ssh` needs the `{SSH_PACKAGE}` package"),
            &format!("add \"{SSH_PACKAGE}\" to [base] packages"),
        ));
    }
    if ssh.authorized_keys.is_empty() {
        return Err(ssh.at.error(
            "`ssh` has no authorized_keys",
            "logins are by key only: ssh = { authorized_keys = [\"ssh-ed25519 AAAA... you@host\"] }",
        ));
    }
    let mut seen: BTreeMap<&str, &Located<String>> = BTreeMap::new();
    for k in &ssh.authorized_keys {
        validate_key(k)?;
        let blob = k.value.split_whitespace().nth(1).unwrap_or_default();
        if let Some(first) = seen.get(blob) {
            return Err(k.error(
                "this key is listed twice",
                &format!("remove one; it is first listed at {}", first.location()),
            ));
        }
        seen.insert(blob, k);
    }
    Ok(Some(Ssh {
        authorized_keys: ssh
            .authorized_keys
            .iter()
            .map(|k| k.value.trim().to_string())
            .collect(),
    }))
}

/// `TYPE BASE64 [COMMENT]`, no options, one line; the key blob must start with its own type
/// name (RFC 4253 section 6.6), which catches keys pasted under the wrong type.
fn validate_key(k: &Located<String>) -> Result<(), RecipeError> {
    let v = k.value.trim();
    let bad = |why: &str| {
        Err(k.error(
            format!("authorized key `{}`: {why}", shorten(v)),
            "paste one public key line as ssh-keygen writes it: \"ssh-ed25519 AAAA... comment\"; options such as command= are not accepted",
        ))
    };
    if v.contains(['\n', '\r']) {
        return bad("spans several lines");
    }
    let mut parts = v.split_whitespace();
    let (Some(ty), Some(blob)) = (parts.next(), parts.next()) else {
        return bad("needs a key type and the key");
    };
    if !KEY_TYPES.contains(&ty) {
        return bad(&format!(
            "key type `{ty}` is not accepted (use one of {})",
            KEY_TYPES.join(", ")
        ));
    }
    let b64 = blob.len() % 4 == 0
        && blob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=');
    if !b64 || blob.len() < 32 {
        return bad("the key is not base64");
    }
    let mut prefix = (ty.len() as u32).to_be_bytes().to_vec();
    prefix.extend_from_slice(ty.as_bytes());
    let whole = prefix.len() / 3 * 3;
    if !blob.starts_with(&base64(&prefix[..whole])) {
        return bad(&format!("the key's data is not a `{ty}` key"));
    }
    Ok(())
}

fn shorten(v: &str) -> String {
    if v.chars().count() > 40 {
        format!("{}...", v.chars().take(40).collect::<String>())
    } else {
        v.to_string()
    }
}

/// Standard base64 of whole 3-byte groups (enough to compare a key's prefix).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks_exact(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for i in (0..4).rev() {
            s.push(A[((n >> (6 * i)) & 63) as usize] as char);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_prefix_of_an_ed25519_key() {
        let mut p = 11u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"ssh-ed25519");
        assert_eq!(base64(&p[..15]), "AAAAC3NzaC1lZDI1NTE5");
    }

    #[test]
    fn host_names_and_addresses() {
        assert!(is_host_name("fleet.example.com"));
        assert!(!is_host_name("10.0.0.0/8"));
        assert!(!is_host_name("fd00::1"));
        assert!(!is_host_name("fd00::/8"));
    }
}
