//! The firewall check of the audit: the ruleset read from the image ([`super::nft`]) judged
//! against the image's policy. Conservative: an accepting rule the audit cannot prove to be
//! within a flow of the policy is a violation, never a pass; so are other tables, includes,
//! jumps, and base chains whose policy is not `drop`.

use serde::Serialize;

use super::nft::{Chain, Match, Rule, Ruleset, Table};
use super::{Finding, Severity};
use crate::recipe::Proto;
use crate::security::{firewall, Flow, Policy};

/// ICMPv6 types the input chain may accept: neighbour discovery.
const ND_IN: [&str; 3] = [
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-router-advert",
];
/// ICMPv6 types the output chain may accept: neighbour discovery and MLD reports.
const ND_OUT: [&str; 4] = [
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-router-solicit",
    "mld2-listener-report",
];

/// What the firewall allows, as the audit read it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Policy of the input, forward and output chains.
    pub policies: Vec<String>,
    /// Inbound flows the ruleset accepts (`tcp/22`).
    pub inbound: Vec<String>,
    /// Outbound flows the ruleset accepts, with destinations.
    pub outbound: Vec<String>,
    /// Named counters.
    pub counters: Vec<String>,
}

fn proto_word(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// Judge a ruleset against a policy: findings, and what the ruleset allows.
pub fn judge(rs: &Ruleset, policy: &Policy) -> (Summary, Vec<Finding>) {
    let mut f = Vec::new();
    let mut sum = Summary::default();
    let v = |subject: &str, problem: String, fix: &str| Finding {
        severity: Severity::Violation,
        check: "firewall".into(),
        subject: subject.into(),
        problem,
        fix: fix.into(),
    };
    const REBUILD: &str = "rebuild the image: /etc/nftables.conf is generated from [[network.inbound]] and [[network.outbound]]; describe every flow there";
    for i in &rs.includes {
        f.push(v(
            "/etc/nftables.conf",
            format!("includes `{i}`, which an offline audit cannot see"),
            REBUILD,
        ));
    }
    for o in &rs.other {
        f.push(v(
            "/etc/nftables.conf",
            format!("has a statement the audit does not understand: `{o}`"),
            REBUILD,
        ));
    }
    let mut ours = None;
    for t in &rs.tables {
        if t.family == "inet" && t.name == firewall::TABLE && ours.is_none() {
            ours = Some(t);
        } else {
            f.push(v(
                "/etc/nftables.conf",
                format!(
                    "has the table `{} {}`, which is not the image's firewall",
                    t.family, t.name
                ),
                REBUILD,
            ));
        }
    }
    let Some(t) = ours else {
        f.push(v(
            "/etc/nftables.conf",
            format!(
                "has no `table inet {}`: the appliance would run without its firewall",
                firewall::TABLE
            ),
            REBUILD,
        ));
        return (sum, f);
    };
    sum.counters = t.counters.clone();
    for hook in ["input", "forward", "output"] {
        let chains: Vec<&Chain> = t
            .chains
            .iter()
            .filter(|c| c.hook.as_deref() == Some(hook))
            .collect();
        let Some(ch) = chains.first() else {
            f.push(v(
                "/etc/nftables.conf",
                format!("has no {hook} chain: {hook} traffic is not filtered"),
                REBUILD,
            ));
            continue;
        };
        let pol = ch.policy.clone().unwrap_or_else(|| "accept".into());
        sum.policies.push(format!("{hook} {pol}"));
        if pol != "drop" {
            f.push(v(
                "/etc/nftables.conf",
                format!("the {hook} chain's policy is `{pol}`, not `drop`"),
                REBUILD,
            ));
        }
        for ch in chains {
            for r in &ch.rules {
                judge_rule(hook, r, t, policy, &mut sum, &mut f);
            }
        }
    }
    for (flows, inbound) in [(&policy.inbound, true), (&policy.outbound, false)] {
        for fl in flows {
            let counter = firewall::flow_counter(fl, inbound);
            if !t.chains.iter().flat_map(|c| &c.rules).any(|r| {
                r.counter.as_deref() == Some(&counter) && r.verdict.as_deref() == Some("accept")
            }) {
                f.push(Finding {
                    severity: Severity::Note,
                    check: "firewall".into(),
                    subject: fl.name.clone(),
                    problem: format!("the policy's flow `{}` has no rule in the ruleset, so the appliance cannot use it", fl.name),
                    fix: REBUILD.into(),
                });
            }
        }
    }
    for c in [firewall::INPUT_DROPPED, firewall::OUTPUT_DROPPED] {
        if !t.counters.iter().any(|x| x == c) {
            f.push(Finding {
                severity: Severity::Note,
                check: "firewall".into(),
                subject: c.into(),
                problem: format!("no `{c}` counter: dropped traffic is not counted"),
                fix: REBUILD.into(),
            });
        }
    }
    (sum, f)
}

fn judge_rule(
    hook: &str,
    r: &Rule,
    t: &Table,
    policy: &Policy,
    sum: &mut Summary,
    f: &mut Vec<Finding>,
) {
    let Some(verdict) = r.verdict.as_deref() else {
        return;
    };
    if verdict == "drop" || verdict == "reject" {
        return;
    }
    let bad = |problem: String| {
        Finding {
        severity: Severity::Violation,
        check: "firewall".into(),
        subject: format!("{hook}: {}", r.text),
        problem,
        fix: "rebuild the image: /etc/nftables.conf is generated from [[network.inbound]] and [[network.outbound]]; describe every flow there".into(),
    }
    };
    if verdict != "accept" {
        f.push(bad(format!(
            "the {hook} chain hands packets to `{verdict}`, which the audit does not follow"
        )));
        return;
    }
    if !r.unknown.is_empty() {
        f.push(bad(format!(
            "accepts traffic on conditions the audit does not understand ({})",
            r.unknown.join(" ")
        )));
        return;
    }
    let m = &r.matches;
    let only = |pred: &dyn Fn(&Match) -> bool| !m.is_empty() && m.iter().all(pred);
    let lo = |x: &Match| matches!(x, Match::Iif(n) | Match::Oif(n) if n == "lo");
    let est = |x: &Match| matches!(x, Match::CtState(s) if s.iter().all(|s| s == "established" || s == "related"));
    let nd: &[&str] = if hook == "input" { &ND_IN } else { &ND_OUT };
    let icmp = |x: &Match| match x {
        Match::IcmpType(fam, types) => {
            fam == "icmpv6" && types.iter().all(|t| nd.contains(&t.as_str()))
        }
        Match::HopLimit(_) | Match::L4proto(_) => true,
        _ => false,
    };
    if only(&lo)
        || only(&est)
        || (m.iter().any(|x| matches!(x, Match::IcmpType(..))) && only(&icmp))
    {
        return;
    }
    match hook {
        "input" => {
            let ports: Vec<(&str, &Vec<u16>)> = m
                .iter()
                .filter_map(|x| match x {
                    Match::Dport(p, ports) => Some((p.as_str(), ports)),
                    _ => None,
                })
                .collect();
            let others = m.iter().any(|x| !matches!(x, Match::Dport(..)));
            match (ports.as_slice(), others) {
                ([(p, list)], false) if *p == "tcp" || *p == "udp" => {
                    for port in list.iter() {
                        sum.inbound.push(format!("{p}/{port}"));
                        if !policy
                            .inbound
                            .iter()
                            .any(|fl| proto_word(fl.proto) == *p && fl.port == *port)
                        {
                            f.push(bad(format!("opens inbound {p} port {port}, which no inbound flow of the policy allows")));
                        }
                    }
                }
                _ => f.push(bad(
                    "accepts inbound traffic the audit cannot match to an inbound flow".into(),
                )),
            }
        }
        "output" => judge_outbound(r, m, t, policy, sum, f, &bad),
        _ => f.push(bad(format!(
            "the {hook} chain accepts traffic: the appliance must never forward"
        ))),
    }
}

fn judge_outbound(
    r: &Rule,
    m: &[Match],
    t: &Table,
    policy: &Policy,
    sum: &mut Summary,
    f: &mut Vec<Finding>,
    bad: &dyn Fn(String) -> Finding,
) {
    let mut port = None;
    let mut dest: Option<(&str, &Vec<String>)> = None;
    for x in m {
        match x {
            Match::Dport(p, list)
                if (p == "tcp" || p == "udp") && list.len() == 1 && port.is_none() =>
            {
                port = Some((p.as_str(), list[0]))
            }
            Match::Daddr(fam, v) if dest.is_none() => dest = Some((fam.as_str(), v)),
            _ => {
                f.push(bad(
                    "accepts outbound traffic the audit cannot match to an outbound flow".into(),
                ));
                return;
            }
        }
    }
    let Some((p, port)) = port else {
        f.push(bad("accepts outbound traffic to any port".into()));
        return;
    };
    let flows: Vec<&Flow> = policy
        .outbound
        .iter()
        .filter(|fl| proto_word(fl.proto) == p && fl.port == port)
        .collect();
    if flows.is_empty() {
        f.push(bad(format!(
            "allows outbound {p} port {port}, which no outbound flow of the policy allows"
        )));
        return;
    }
    let Some((fam, targets)) = dest else {
        sum.outbound.push(format!("{p}/{port} to any"));
        if !flows.iter().any(|fl| fl.to.is_empty()) {
            f.push(bad(format!("allows outbound {p} port {port} to any destination; the policy allows it only to {}", flows[0].to.join(", "))));
        }
        return;
    };
    // Destinations: a named set, or literal addresses.
    let (label, addrs, hosts_of): (String, Vec<String>, Option<String>) = match targets.as_slice() {
        [s] if s.starts_with('@') => {
            let name = &s[1..];
            let Some(set) = t.sets.iter().find(|x| x.name == name) else {
                f.push(bad(format!(
                    "refers to the set `{name}`, which the table does not define"
                )));
                return;
            };
            let hosts = flows.iter().find(|fl| {
                [firewall::Family::V4, firewall::Family::V6]
                    .iter()
                    .any(|fam| firewall::hosts_set(&fl.name, *fam) == name)
            });
            (
                format!("@{name}"),
                set.elements.clone(),
                hosts.map(|fl| fl.name.clone()),
            )
        }
        list => (list.join(", "), list.to_vec(), None),
    };
    let allowed = |a: &String| flows.iter().any(|fl| fl.to.iter().any(|d| d == a));
    let outside: Vec<&String> = addrs.iter().filter(|a| !allowed(a)).collect();
    if !outside.is_empty() {
        f.push(bad(format!(
            "allows outbound {p} port {port} to {}, which no outbound flow of the policy lists",
            outside
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
        return;
    }
    if addrs.is_empty() && hosts_of.is_none() {
        f.push(bad(format!("allows outbound {p} port {port} to the set {label}, which is filled at run time but is not a host-name set of a flow")));
        return;
    }
    let shown = match &hosts_of {
        Some(flow) => format!("{p}/{port} to {fam} {label} (host names of `{flow}`)"),
        None => format!("{p}/{port} to {fam} {label} = {{{}}}", addrs.join(", ")),
    };
    sum.outbound.push(shown);
    let _ = r;
}

#[cfg(test)]
#[path = "nft_tests.rs"]
mod tests;
