//! Tests of the nftables reader and its judgement: the generated rulesets parse completely
//! and pass; each way of smuggling traffic past the policy is named.

use super::*;
use crate::audit::nft::{parse, parse_rule_text};
use crate::security::firewall::{self as fw, ruleset};
use crate::security::Policy;

fn default_policy() -> Policy {
    let recipe =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/qemu-x86_64.toml");
    Policy::from_recipe(&crate::recipe::Recipe::load(&recipe).unwrap())
}

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/firewall")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn violations(text: &str, p: &Policy) -> Vec<Finding> {
    judge(&parse(text), p)
        .1
        .into_iter()
        .filter(|f| f.severity == Severity::Violation)
        .collect()
}

fn insert_rule(text: &str, chain: &str, rule: &str) -> String {
    let head =
        format!("chain {chain} {{\n\t\ttype filter hook {chain} priority filter; policy drop;\n");
    assert!(text.contains(&head), "no {chain} chain");
    text.replacen(&head, &format!("{head}\t\t{rule}\n"), 1)
}

#[test]
fn generated_ruleset_parses_completely() {
    let rs = parse(&ruleset(&default_policy()));
    assert!(rs.includes.is_empty() && rs.other.is_empty(), "{rs:?}");
    assert_eq!(rs.tables.len(), 1);
    let t = &rs.tables[0];
    assert_eq!((t.family.as_str(), t.name.as_str()), ("inet", "aperture"));
    let hooks: Vec<_> = t
        .chains
        .iter()
        .map(|c| (c.hook.clone().unwrap(), c.policy.clone().unwrap()))
        .collect();
    assert_eq!(
        hooks,
        [
            ("input".to_string(), "drop".to_string()),
            ("forward".into(), "drop".into()),
            ("output".into(), "drop".into())
        ]
    );
    for r in t.chains.iter().flat_map(|c| &c.rules) {
        assert!(r.unknown.is_empty(), "not understood: {r:?}");
    }
    assert!(t.counters.contains(&fw::INPUT_DROPPED.to_string()));
    let cams = t.sets.iter().find(|s| s.name == "cameras_v4").unwrap();
    assert_eq!(cams.elements, ["192.168.0.0/16", "10.0.0.0/8"]);
}

#[test]
fn generated_rulesets_pass() {
    let p = default_policy();
    let (sum, f) = judge(&parse(&ruleset(&p)), &p);
    assert!(f.is_empty(), "{f:#?}");
    assert!(sum.inbound.is_empty());
    assert!(
        sum.outbound.contains(&"tcp/443 to any".to_string()),
        "{:?}",
        sum.outbound
    );
    assert!(
        sum.outbound
            .iter()
            .any(|o| o.starts_with("tcp/554 to ip @cameras_v4")),
        "{:?}",
        sum.outbound
    );
    let hosts = crate::security::firewall::tests::hosts_policy();
    assert!(violations(&ruleset(&hosts), &hosts).is_empty());
    let inbound = crate::security::firewall::tests::inbound_policy();
    let (sum, f) = judge(&parse(&ruleset(&inbound)), &inbound);
    assert!(f.is_empty(), "{f:#?}");
    assert_eq!(sum.inbound, ["tcp/9100"]);
}

#[test]
fn listed_ruleset_parses_and_passes() {
    // `nft list ruleset` of the default ruleset loaded in a network namespace: counters carry
    // values, sets and chains are reordered.
    let p = default_policy();
    let v = violations(&fixture("default-listed.nft"), &p);
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn smuggled_inbound_port_is_named() {
    let p = default_policy();
    let text = insert_rule(&ruleset(&p), "input", "tcp dport 2222 accept");
    let v = violations(&text, &p);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert!(
        v[0].problem.contains("opens inbound tcp port 2222"),
        "{}",
        v[0].problem
    );
    // The same port is fine once the policy has the flow.
    let mut q = p.clone();
    q.inbound.push(crate::security::Flow {
        name: "shell".into(),
        proto: crate::recipe::Proto::Tcp,
        port: 2222,
        to: vec![],
        implicit: false,
    });
    assert!(violations(&text, &q).is_empty());
}

#[test]
fn accepting_policies_and_forwarding_are_named() {
    let p = default_policy();
    let text = ruleset(&p).replacen(
        "hook input priority filter; policy drop;",
        "hook input priority filter; policy accept;",
        1,
    );
    assert!(violations(&text, &p)
        .iter()
        .any(|f| f.problem.contains("input chain's policy is `accept`")));
    let text = insert_rule(&ruleset(&p), "forward", "iif \"eth0\" oif \"eth1\" accept");
    assert!(violations(&text, &p)
        .iter()
        .any(|f| f.problem.contains("must never forward")));
    let text = ruleset(&p).replace("\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tcounter name \"forward_dropped\" drop\n\t}\n", "");
    assert!(violations(&text, &p)
        .iter()
        .any(|f| f.problem.contains("no forward chain")));
}

#[test]
fn other_tables_includes_and_unknown_accepts_are_named() {
    let p = default_policy();
    let base = ruleset(&p);
    let nat = format!("{base}\ntable ip nat {{\n\tchain pre {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\ttcp dport 80 dnat to 10.0.0.1:8080\n\t}}\n}}\n");
    assert!(violations(&nat, &p)
        .iter()
        .any(|f| f.problem.contains("`ip nat`")));
    let inc = format!("include \"/etc/nftables.d/*.nft\"\n{base}");
    assert!(violations(&inc, &p)
        .iter()
        .any(|f| f.problem.contains("includes")));
    let skuid = insert_rule(&base, "output", "meta skuid 0 accept");
    assert!(violations(&skuid, &p)
        .iter()
        .any(|f| f.problem.contains("does not understand")));
    let jump = insert_rule(&base, "input", "jump extra");
    assert!(violations(&jump, &p)
        .iter()
        .any(|f| f.problem.contains("jump extra")));
}

#[test]
fn outbound_beyond_the_policy_is_named() {
    let p = default_policy();
    let base = ruleset(&p);
    let any_cam = insert_rule(&base, "output", "tcp dport 554 accept");
    assert!(violations(&any_cam, &p)
        .iter()
        .any(|f| f.problem.contains("to any destination")));
    let ssh = insert_rule(&base, "output", "tcp dport 22 accept");
    assert!(violations(&ssh, &p)
        .iter()
        .any(|f| f.problem.contains("outbound tcp port 22")));
    let wide = base.replace(
        "elements = { 192.168.0.0/16, 10.0.0.0/8 }",
        "elements = { 0.0.0.0/0 }",
    );
    assert!(violations(&wide, &p)
        .iter()
        .any(|f| f.problem.contains("0.0.0.0/0")));
}

#[test]
fn a_missing_table_is_named() {
    let p = default_policy();
    let v = violations("flush ruleset\n", &p);
    assert!(v
        .iter()
        .any(|f| f.problem.contains("no `table inet aperture`")));
}

#[test]
fn rule_reader_understands_common_forms() {
    let r =
        parse_rule_text("ct state { established, related } counter packets 12 bytes 3400 accept");
    assert_eq!(
        r.matches,
        [Match::CtState(vec!["established".into(), "related".into()])]
    );
    assert_eq!(r.verdict.as_deref(), Some("accept"));
    let r = parse_rule_text("ct state established,related accept");
    assert_eq!(
        r.matches,
        [Match::CtState(vec!["established".into(), "related".into()])]
    );
    let r = parse_rule_text(
        "ip6 daddr @x_v6 udp dport { 53, 853 } counter name \"out_x\" accept comment \"x\"",
    );
    assert_eq!(r.matches[1], Match::Dport("udp".into(), vec![53, 853]));
    assert_eq!(r.counter.as_deref(), Some("out_x"));
    assert_eq!(r.comment.as_deref(), Some("x"));
    let r = parse_rule_text("tcp dport 1000-2000 accept");
    assert!(
        !r.unknown.is_empty(),
        "port ranges are not understood, so never trusted"
    );
}
