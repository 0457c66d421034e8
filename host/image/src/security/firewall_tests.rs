//! Tests of the ruleset generator: golden rulesets for the default recipe, host names and an
//! inbound flow; `nft -c` accepts each; the resolver script fills host sets in a network
//! namespace. Regenerate the golden files with `APERTURE_BLESS=1 cargo test -p aperture-image`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::recipe::Recipe;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/firewall")
}

/// Compare `got` with a golden file; `APERTURE_BLESS=1` rewrites it instead.
fn golden(name: &str, got: &str) {
    let path = fixtures().join(name);
    if std::env::var_os("APERTURE_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (APERTURE_BLESS=1 writes it)", path.display()));
    assert_eq!(
        got, want,
        "{name} differs from the golden file; if intended, APERTURE_BLESS=1 rewrites it"
    );
}

pub(crate) fn default_policy() -> Policy {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/qemu-x86_64.toml");
    Policy::from_recipe(&Recipe::load(&recipe).unwrap())
}

fn flow(name: &str, proto: Proto, port: u16, to: &[&str]) -> Flow {
    Flow {
        name: name.into(),
        proto,
        port,
        to: to.iter().map(|s| s.to_string()).collect(),
        implicit: false,
    }
}

pub(crate) fn hosts_policy() -> Policy {
    let mut p = default_policy();
    p.outbound = vec![
        flow(
            "fleet",
            Proto::Tcp,
            443,
            &["fleet.example.com", "198.51.100.0/24", "2001:db8::/32"],
        ),
        flow("dns", Proto::Udp, 53, &[]),
        flow(
            "cameras",
            Proto::Tcp,
            554,
            &["10.0.0.0/8", "192.168.0.0/16"],
        ),
    ];
    p
}

pub(crate) fn inbound_policy() -> Policy {
    let mut p = default_policy();
    p.inbound = vec![flow("metrics", Proto::Tcp, 9100, &[])];
    p
}

#[test]
fn default_policy_ruleset_is_golden() {
    let p = default_policy();
    let r = ruleset(&p);
    golden("default.nft", &r);
    assert!(r.contains("type filter hook input priority filter; policy drop;"));
    assert!(r.contains("type filter hook forward priority filter; policy drop;"));
    assert!(r.contains("type filter hook output priority filter; policy drop;"));
    assert!(r.contains("\t\tcounter name \"input_dropped\" drop\n"));
    assert!(r.contains("\t\ttcp dport 443 counter name \"out_fleet\" accept comment \"fleet\"\n"));
    assert!(r.contains("ip daddr @cameras_v4 tcp dport 554"));
    assert!(
        r.contains("udp dport 67 counter name \"out_dhcp-client\" accept"),
        "DHCP renewals"
    );
    // No inbound flow: nothing but loopback, replies and neighbour discovery is accepted.
    let input = r
        .split("chain input")
        .nth(1)
        .unwrap()
        .split("chain forward")
        .next()
        .unwrap();
    assert!(!input.contains("dport"), "{input}");
    assert_eq!(
        host_list(&p)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count(),
        0
    );
    assert!(!has_host_names(&p));
}

#[test]
fn host_names_become_sets_filled_at_boot() {
    let p = hosts_policy();
    let r = ruleset(&p);
    golden("hosts.nft", &r);
    assert!(r.contains("\tset fleet_hosts_v4 {\n\t\ttype ipv4_addr\n"));
    assert!(r.contains("\tset fleet_hosts_v6 {\n\t\ttype ipv6_addr\n"));
    assert!(r.contains("elements = { 198.51.100.0/24 }"));
    assert!(r.contains("elements = { 2001:db8::/32 }"));
    assert!(r.contains("ip daddr @fleet_hosts_v4 tcp dport 443"));
    assert!(r.contains("ip6 daddr @fleet_hosts_v6 tcp dport 443"));
    assert!(
        !r.contains("\t\ttcp dport 443"),
        "fleet must not be open to any destination"
    );
    assert_eq!(
        host_list(&p)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        ["fleet_hosts_v4 fleet_hosts_v6 fleet.example.com"]
    );
    assert!(has_host_names(&p));
}

#[test]
fn inbound_rule_opens_one_port() {
    let r = ruleset(&inbound_policy());
    golden("inbound.nft", &r);
    let input = r
        .split("chain input")
        .nth(1)
        .unwrap()
        .split("chain forward")
        .next()
        .unwrap();
    assert!(input
        .contains("\t\ttcp dport 9100 counter name \"in_metrics\" accept comment \"metrics\"\n"));
    assert_eq!(input.matches("dport").count(), 1);
}

fn nft() -> Option<PathBuf> {
    aperture_sys::tool::for_test("nft", "nftables", "firewall tests")
}

/// A check that cannot run here: skipped, or a failure under `cargo xtask test` (as root,
/// with every tool installed, it can always run).
fn skip(why: &str) {
    assert!(
        !aperture_sys::tool::required(),
        "APERTURE_REQUIRE_TOOLS=1 but {why}"
    );
    eprintln!("SKIPPED {why}");
}

/// `nft -c -f FILE` (as root, or in a user namespace); `None` when it cannot run here.
fn nft_check(file: &Path) -> Option<Result<(), String>> {
    let nft = nft()?;
    let direct = Command::new(&nft)
        .arg("-c")
        .arg("-f")
        .arg(file)
        .output()
        .ok()?;
    let out = if direct.status.success()
        || !String::from_utf8_lossy(&direct.stderr).contains("Operation not permitted")
    {
        direct
    } else {
        let o = Command::new("unshare")
            .args(["-r", "-n"])
            .arg(&nft)
            .arg("-c")
            .arg("-f")
            .arg(file)
            .output()
            .ok()?;
        if !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unshare") {
            return None;
        }
        o
    };
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

#[test]
fn nft_accepts_every_generated_ruleset() {
    let dir = tempfile::tempdir().unwrap();
    for (name, p) in [
        ("default", default_policy()),
        ("hosts", hosts_policy()),
        ("inbound", inbound_policy()),
    ] {
        let file = dir.path().join(format!("{name}.nft"));
        std::fs::write(&file, ruleset(&p)).unwrap();
        match nft_check(&file) {
            None => {
                skip("nft -c: nft is not installed or cannot check without privileges here");
                return;
            }
            Some(r) => r.unwrap_or_else(|e| panic!("nft -c rejects the {name} ruleset:\n{e}")),
        }
    }
}

#[test]
fn nft_rejects_a_broken_ruleset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.nft");
    std::fs::write(
        &file,
        ruleset(&default_policy()).replace("policy drop;", "policy drip;"),
    )
    .unwrap();
    match nft_check(&file) {
        None => skip("nft -c: nft is not installed or cannot check without privileges here"),
        Some(r) => assert!(r.is_err(), "nft -c accepted `policy drip`"),
    }
}

/// The resolver script, run for real in a private network namespace: load the hosts ruleset,
/// resolve into the fleet's sets, and read them back. `getent` is a recorded stand-in (a
/// fresh namespace has no configured address, so glibc's AI_ADDRCONFIG would answer nothing):
/// its output for `ahostsv6` carries an IPv4-mapped address the script must drop.
#[test]
fn resolver_script_fills_host_sets() {
    let Some(nft) = nft() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../overlays/hardening/usr/lib/aperture/firewall-resolve");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("hosts.nft");
    std::fs::write(&rules, ruleset(&hosts_policy())).unwrap();
    let list = dir.path().join("firewall-hosts");
    std::fs::write(
        &list,
        "# test\nfleet_hosts_v4 fleet_hosts_v6 fleet.example.com\n",
    )
    .unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join("getent"),
        "#!/bin/sh\ncase \"$1 $2\" in\n\
         'ahostsv4 fleet.example.com') printf '198.51.100.7    STREAM fleet.example.com\\n198.51.100.7    DGRAM\\n198.51.100.8    STREAM\\n' ;;\n\
         'ahostsv6 fleet.example.com') printf '2001:db8::7     STREAM fleet.example.com\\n::ffff:198.51.100.7 STREAM\\n' ;;\n\
         *) exit 2 ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("getent"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let inner = format!(
        "set -e; PATH={bin}:$PATH:/usr/sbin:/sbin; {nft} -f {rules}; sh {script} {list}; {nft} list set inet aperture fleet_hosts_v4; {nft} list set inet aperture fleet_hosts_v6",
        bin = bin.display(),
        nft = nft.display(),
        rules = rules.display(),
        script = script.display(),
        list = list.display()
    );
    let mut out = None;
    for args in [&["-n"][..], &["-r", "-n"][..]] {
        let o = Command::new("unshare")
            .args(args)
            .args(["sh", "-c", &inner])
            .output();
        if let Ok(o) = o {
            if o.status.success() {
                out = Some(o);
                break;
            }
            eprintln!("unshare {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let Some(o) = out else {
        eprintln!("SKIPPED resolver: cannot make a network namespace here (needs root or user namespaces)");
        return;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("elements = { 198.51.100.7, 198.51.100.8 }"),
        "IPv4 set:\n{text}"
    );
    assert!(
        text.contains("elements = { 2001:db8::7 }"),
        "IPv6 set without the mapped address:\n{text}"
    );

    // DNS down: a name that no longer resolves leaves its set as it was (no flush).
    let down = dir.path().join("firewall-hosts-down");
    std::fs::write(&down, "fleet_hosts_v4 fleet_hosts_v6 gone.example.com\n").unwrap();
    let inner = format!(
        "set -e; PATH={bin}:$PATH:/usr/sbin:/sbin; {nft} -f {rules}; sh {script} {list}; sh {script} {down}; {nft} list set inet aperture fleet_hosts_v4",
        bin = bin.display(),
        nft = nft.display(),
        rules = rules.display(),
        script = script.display(),
        list = list.display(),
        down = down.display()
    );
    let o = Command::new("unshare")
        .args(["-r", "-n", "sh", "-c", &inner])
        .output();
    let o = match o {
        Ok(o) if o.status.success() => o,
        _ => Command::new("unshare")
            .args(["-n", "sh", "-c", &inner])
            .output()
            .unwrap(),
    };
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("cannot resolve gone.example.com"), "{text}");
    assert!(
        text.contains("elements = { 198.51.100.7, 198.51.100.8 }"),
        "the set lost its addresses:\n{text}"
    );
}
