//! A reader for the nftables ruleset an image carries (`/etc/nftables.conf`, nft(8) syntax),
//! and the judgement of that ruleset against the image's policy.
//!
//! The reader understands the declarative form (`table FAMILY NAME { chain ... set ...
//! counter ... }`) and, within rules, the matches the generator writes plus the common ones.
//! Anything it does not understand is kept and reported: the audit is conservative, so an
//! accepting rule it cannot prove to be within the policy is a violation, never a pass.

use serde::Serialize;

use super::{Finding, Severity};
use crate::recipe::Proto;
use crate::security::{firewall, Flow, Policy};

/// A ruleset file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ruleset {
    /// Tables.
    pub tables: Vec<Table>,
    /// `include` statements (their contents cannot be audited offline).
    pub includes: Vec<String>,
    /// Top-level statements other than `flush ruleset`, `table`, `include` and `define`.
    pub other: Vec<String>,
}

/// A table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Table {
    /// `ip`, `ip6`, `inet`, ...
    pub family: String,
    /// Name.
    pub name: String,
    /// Chains.
    pub chains: Vec<Chain>,
    /// Sets.
    pub sets: Vec<Set>,
    /// Named counters.
    pub counters: Vec<String>,
}

/// A chain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Chain {
    /// Name.
    pub name: String,
    /// Hook of a base chain (`input`, `output`, `forward`, ...).
    pub hook: Option<String>,
    /// Policy of a base chain (`accept` when not written).
    pub policy: Option<String>,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// A named set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Set {
    /// Name.
    pub name: String,
    /// Element type (`ipv4_addr`, ...).
    pub ty: String,
    /// Elements as written.
    pub elements: Vec<String>,
}

/// What a rule matches on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "match", content = "value")]
pub enum Match {
    /// `iif`/`iifname`.
    Iif(String),
    /// `oif`/`oifname`.
    Oif(String),
    /// `ct state`.
    CtState(Vec<String>),
    /// `meta l4proto`.
    L4proto(Vec<String>),
    /// `tcp|udp|th dport`: protocol word and ports.
    Dport(String, Vec<u16>),
    /// `ip|ip6 daddr`: family word and a set reference (`@name`) or addresses.
    Daddr(String, Vec<String>),
    /// `ip|ip6 saddr`.
    Saddr(String, Vec<String>),
    /// `icmp|icmpv6 type`.
    IcmpType(String, Vec<String>),
    /// `ip6 hoplimit`.
    HopLimit(String),
}

/// A rule.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rule {
    /// The rule as written (tokens joined by spaces).
    pub text: String,
    /// Matches understood.
    pub matches: Vec<Match>,
    /// Verdict: `accept`, `drop`, `reject`, `jump X`, `goto X`, `return`, `queue`, ...
    pub verdict: Option<String>,
    /// The named counter it updates.
    pub counter: Option<String>,
    /// Its comment.
    pub comment: Option<String>,
    /// Tokens not understood.
    pub unknown: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
    End,
}

fn tokenize(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |w: &mut String, out: &mut Vec<Tok>| {
        if !w.is_empty() {
            out.push(Tok::Word(std::mem::take(w)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                flush(&mut word, &mut out);
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push(Tok::End);
                        break;
                    }
                }
            }
            '"' => {
                flush(&mut word, &mut out);
                let mut s = String::new();
                for n in chars.by_ref() {
                    if n == '"' {
                        break;
                    }
                    s.push(n);
                }
                out.push(Tok::Str(s));
            }
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
            }
            '{' | '}' | ',' | ';' | '\n' => {
                flush(&mut word, &mut out);
                out.push(match c {
                    '{' => Tok::Open,
                    '}' => Tok::Close,
                    ',' => Tok::Comma,
                    _ => Tok::End,
                });
            }
            c if c.is_whitespace() => flush(&mut word, &mut out),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    out
}

/// One statement: tokens up to a newline or `;` outside braces, or a `{ ... }` block header.
struct Cursor {
    toks: Vec<Tok>,
    at: usize,
}

impl Cursor {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    /// Tokens of the next statement; a `{` at depth 0 ends it (the block is the caller's).
    fn statement(&mut self) -> (Vec<Tok>, bool) {
        let mut out = Vec::new();
        let mut depth = 0;
        while let Some(t) = self.toks.get(self.at).cloned() {
            match t {
                Tok::End if depth == 0 => {
                    self.at += 1;
                    if out.is_empty() {
                        continue;
                    }
                    return (out, false);
                }
                Tok::End => {}
                Tok::Open if depth == 0 && block_header(&out) => {
                    self.at += 1;
                    return (out, true);
                }
                Tok::Open => {
                    depth += 1;
                    out.push(t);
                }
                Tok::Close if depth == 0 => return (out, false),
                Tok::Close => {
                    depth -= 1;
                    out.push(t);
                }
                _ => out.push(t),
            }
            self.at += 1;
        }
        (out, false)
    }
    /// Skip to the `}` closing the current block (and past it).
    fn close_block(&mut self) {
        let mut depth = 0;
        while let Some(t) = self.toks.get(self.at) {
            self.at += 1;
            match t {
                Tok::Open => depth += 1,
                Tok::Close if depth == 0 => return,
                Tok::Close => depth -= 1,
                _ => {}
            }
        }
    }
}

/// Statements that open a block: `table ...`, `chain X`, `set X`, `map X`, `counter X`, ...
fn block_header(toks: &[Tok]) -> bool {
    matches!(toks.first(), Some(Tok::Word(w)) if ["table", "chain", "set", "map", "counter", "quota", "flowtable", "ct", "limit", "secmark", "synproxy"].contains(&w.as_str()))
        && toks.len() >= 2
        && !matches!(toks.get(1), Some(Tok::Word(w)) if w == "state")
        && !toks.iter().any(|t| matches!(t, Tok::Word(w) if w == "=" ))
}

fn words(toks: &[Tok]) -> Vec<String> {
    toks.iter()
        .map(|t| match t {
            Tok::Word(w) => w.clone(),
            Tok::Str(s) => s.clone(),
            Tok::Open => "{".into(),
            Tok::Close => "}".into(),
            Tok::Comma => ",".into(),
            Tok::End => ";".into(),
        })
        .collect()
}

fn text_of(toks: &[Tok]) -> String {
    toks.iter()
        .map(|t| match t {
            Tok::Str(s) => format!("\"{s}\""),
            other => words(std::slice::from_ref(other)).remove(0),
        })
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" , ", ", ")
}

/// Parse a ruleset file.
pub fn parse(text: &str) -> Ruleset {
    let mut c = Cursor {
        toks: tokenize(text),
        at: 0,
    };
    let mut rs = Ruleset::default();
    while c.peek().is_some() {
        let (st, block) = c.statement();
        let w = words(&st);
        if st.is_empty() {
            c.at += 1; // a stray `}`
            continue;
        }
        match w.first().map(String::as_str) {
            Some("table") if block => {
                let (family, name) = match w.len() {
                    2 => ("ip".to_string(), w[1].clone()),
                    _ => (w[1].clone(), w[2].clone()),
                };
                rs.tables.push(parse_table(&mut c, family, name));
            }
            Some("flush") if w.get(1).map(String::as_str) == Some("ruleset") => {}
            Some("define") => {}
            Some("include") => rs.includes.push(w.get(1).cloned().unwrap_or_default()),
            _ => {
                rs.other.push(text_of(&st));
                if block {
                    c.close_block();
                }
            }
        }
    }
    rs
}

fn parse_table(c: &mut Cursor, family: String, name: String) -> Table {
    let mut t = Table {
        family,
        name,
        ..Default::default()
    };
    loop {
        match c.peek() {
            None => return t,
            Some(Tok::Close) => {
                c.at += 1;
                return t;
            }
            _ => {}
        }
        let (st, block) = c.statement();
        let w = words(&st);
        match (w.first().map(String::as_str), block) {
            (Some("chain"), true) => t.chains.push(parse_chain(c, w.get(1).cloned().unwrap_or_default())),
            (Some("set"), true) => t.sets.push(parse_set(c, w.get(1).cloned().unwrap_or_default())),
            (Some("counter"), true) => {
                t.counters.push(w.get(1).cloned().unwrap_or_default());
                c.close_block();
            }
            (_, true) => c.close_block(),
            _ => {}
        }
    }
}

fn parse_set(c: &mut Cursor, name: String) -> Set {
    let mut s = Set {
        name,
        ..Default::default()
    };
    loop {
        match c.peek() {
            None => return s,
            Some(Tok::Close) => {
                c.at += 1;
                return s;
            }
            _ => {}
        }
        let (st, block) = c.statement();
        let w = words(&st);
        match w.first().map(String::as_str) {
            Some("type") => s.ty = w.get(1).cloned().unwrap_or_default(),
            Some("elements") => {
                s.elements = w
                    .iter()
                    .skip(2)
                    .filter(|x| !["{", "}", ","].contains(&x.as_str()))
                    .cloned()
                    .collect()
            }
            _ => {}
        }
        if block {
            c.close_block();
        }
    }
}

fn parse_chain(c: &mut Cursor, name: String) -> Chain {
    let mut ch = Chain {
        name,
        ..Default::default()
    };
    loop {
        match c.peek() {
            None => return ch,
            Some(Tok::Close) => {
                c.at += 1;
                return ch;
            }
            _ => {}
        }
        let (st, block) = c.statement();
        let w = words(&st);
        match w.first().map(String::as_str) {
            Some("type") => {
                ch.hook = w
                    .iter()
                    .position(|x| x == "hook")
                    .and_then(|i| w.get(i + 1).cloned());
            }
            Some("policy") => ch.policy = w.get(1).cloned(),
            Some(_) => ch.rules.push(parse_rule(&st)),
            None => {}
        }
        if block {
            c.close_block();
        }
    }
}

/// A value after a selector: one word, or a `{ a, b }` list.
fn values(w: &[String], i: &mut usize) -> Vec<String> {
    let mut out = Vec::new();
    match w.get(*i).map(String::as_str) {
        Some("{") => {
            *i += 1;
            while let Some(x) = w.get(*i) {
                *i += 1;
                match x.as_str() {
                    "}" => break,
                    "," => {}
                    v => out.push(v.to_string()),
                }
            }
        }
        Some(v) => {
            out.push(v.to_string());
            *i += 1;
            // `established,related` tokenizes as word, comma, word.
            while w.get(*i).map(String::as_str) == Some(",") {
                if let Some(n) = w.get(*i + 1) {
                    out.push(n.clone());
                }
                *i += 2;
            }
        }
        None => {}
    }
    out
}

/// Parse one rule's tokens.
pub fn parse_rule_text(text: &str) -> Rule {
    let toks: Vec<Tok> = tokenize(text)
        .into_iter()
        .filter(|t| *t != Tok::End)
        .collect();
    parse_rule(&toks)
}

fn parse_rule(toks: &[Tok]) -> Rule {
    let w = words(toks);
    let mut r = Rule {
        text: text_of(toks),
        ..Default::default()
    };
    let mut i = 0;
    while i < w.len() {
        let a = w[i].as_str();
        let b = w.get(i + 1).map(String::as_str);
        i += 1;
        match (a, b) {
            ("iif" | "iifname", Some(_)) => {
                r.matches.push(Match::Iif(w[i].clone()));
                i += 1;
            }
            ("oif" | "oifname", Some(_)) => {
                r.matches.push(Match::Oif(w[i].clone()));
                i += 1;
            }
            ("ct", Some("state")) => {
                i += 1;
                r.matches.push(Match::CtState(values(&w, &mut i)));
            }
            ("meta", Some("l4proto")) => {
                i += 1;
                r.matches.push(Match::L4proto(values(&w, &mut i)));
            }
            ("tcp" | "udp" | "th", Some("dport")) => {
                i += 1;
                let v = values(&w, &mut i);
                let ports: Vec<u16> = v.iter().filter_map(|p| p.parse().ok()).collect();
                if ports.len() == v.len() && !v.is_empty() {
                    r.matches.push(Match::Dport(a.to_string(), ports));
                } else {
                    r.unknown.push(format!("{a} dport {}", v.join(",")));
                }
            }
            ("ip" | "ip6", Some("daddr")) => {
                i += 1;
                r.matches.push(Match::Daddr(a.to_string(), values(&w, &mut i)));
            }
            ("ip" | "ip6", Some("saddr")) => {
                i += 1;
                r.matches.push(Match::Saddr(a.to_string(), values(&w, &mut i)));
            }
            ("icmp" | "icmpv6", Some("type")) => {
                i += 1;
                r.matches.push(Match::IcmpType(a.to_string(), values(&w, &mut i)));
            }
            ("ip6", Some("hoplimit")) => {
                i += 1;
                r.matches.push(Match::HopLimit(values(&w, &mut i).join(",")));
            }
            ("counter", Some("name")) => {
                r.counter = w.get(i + 1).cloned();
                i += 2;
            }
            // `nft list ruleset` shows anonymous counters' values.
            ("counter", Some("packets")) => i += 4,
            ("counter", _) => {}
            ("comment", Some(_)) => {
                r.comment = Some(w[i].clone());
                i += 1;
            }
            ("accept" | "drop" | "reject" | "return" | "continue" | "queue", _) => {
                r.verdict = Some(a.to_string())
            }
            ("jump" | "goto", Some(t)) => {
                r.verdict = Some(format!("{a} {t}"));
                i += 1;
            }
            _ => r.unknown.push(a.to_string()),
        }
    }
    r
}

/// ICMPv6 types the input chain may accept: neighbour discovery.
const ND_IN: [&str; 3] = ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert"];
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
        f.push(v("/etc/nftables.conf", format!("includes `{i}`, which an offline audit cannot see"), REBUILD));
    }
    for o in &rs.other {
        f.push(v("/etc/nftables.conf", format!("has a statement the audit does not understand: `{o}`"), REBUILD));
    }
    let mut ours = None;
    for t in &rs.tables {
        if t.family == "inet" && t.name == firewall::TABLE && ours.is_none() {
            ours = Some(t);
        } else {
            f.push(v(
                "/etc/nftables.conf",
                format!("has the table `{} {}`, which is not the image's firewall", t.family, t.name),
                REBUILD,
            ));
        }
    }
    let Some(t) = ours else {
        f.push(v(
            "/etc/nftables.conf",
            format!("has no `table inet {}`: the appliance would run without its firewall", firewall::TABLE),
            REBUILD,
        ));
        return (sum, f);
    };
    sum.counters = t.counters.clone();
    for hook in ["input", "forward", "output"] {
        let chains: Vec<&Chain> = t.chains.iter().filter(|c| c.hook.as_deref() == Some(hook)).collect();
        let Some(ch) = chains.first() else {
            f.push(v("/etc/nftables.conf", format!("has no {hook} chain: {hook} traffic is not filtered"), REBUILD));
            continue;
        };
        let pol = ch.policy.clone().unwrap_or_else(|| "accept".into());
        sum.policies.push(format!("{hook} {pol}"));
        if pol != "drop" {
            f.push(v("/etc/nftables.conf", format!("the {hook} chain's policy is `{pol}`, not `drop`"), REBUILD));
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
            if !t.chains.iter().flat_map(|c| &c.rules).any(|r| r.counter.as_deref() == Some(&counter) && r.verdict.as_deref() == Some("accept")) {
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

fn judge_rule(hook: &str, r: &Rule, t: &Table, policy: &Policy, sum: &mut Summary, f: &mut Vec<Finding>) {
    let Some(verdict) = r.verdict.as_deref() else {
        return;
    };
    if verdict == "drop" || verdict == "reject" {
        return;
    }
    let bad = |problem: String| Finding {
        severity: Severity::Violation,
        check: "firewall".into(),
        subject: format!("{hook}: {}", r.text),
        problem,
        fix: "rebuild the image: /etc/nftables.conf is generated from [[network.inbound]] and [[network.outbound]]; describe every flow there".into(),
    };
    if verdict != "accept" {
        f.push(bad(format!("the {hook} chain hands packets to `{verdict}`, which the audit does not follow")));
        return;
    }
    if !r.unknown.is_empty() {
        f.push(bad(format!("accepts traffic on conditions the audit does not understand ({})", r.unknown.join(" "))));
        return;
    }
    let m = &r.matches;
    let only = |pred: &dyn Fn(&Match) -> bool| !m.is_empty() && m.iter().all(pred);
    let lo = |x: &Match| matches!(x, Match::Iif(n) | Match::Oif(n) if n == "lo");
    let est = |x: &Match| matches!(x, Match::CtState(s) if s.iter().all(|s| s == "established" || s == "related"));
    let nd: &[&str] = if hook == "input" { &ND_IN } else { &ND_OUT };
    let icmp = |x: &Match| match x {
        Match::IcmpType(fam, types) => fam == "icmpv6" && types.iter().all(|t| nd.contains(&t.as_str())),
        Match::HopLimit(_) | Match::L4proto(_) => true,
        _ => false,
    };
    if only(&lo) || only(&est) || (m.iter().any(|x| matches!(x, Match::IcmpType(..))) && only(&icmp)) {
        return;
    }
    match hook {
        "input" => {
            let ports: Vec<(&str, &Vec<u16>)> = m.iter().filter_map(|x| match x { Match::Dport(p, ports) => Some((p.as_str(), ports)), _ => None }).collect();
            let others = m.iter().any(|x| !matches!(x, Match::Dport(..)));
            match (ports.as_slice(), others) {
                ([(p, list)], false) if *p == "tcp" || *p == "udp" => {
                    for port in list.iter() {
                        sum.inbound.push(format!("{p}/{port}"));
                        if !policy.inbound.iter().any(|fl| proto_word(fl.proto) == *p && fl.port == *port) {
                            f.push(bad(format!("opens inbound {p} port {port}, which no inbound flow of the policy allows")));
                        }
                    }
                }
                _ => f.push(bad("accepts inbound traffic the audit cannot match to an inbound flow".into())),
            }
        }
        "output" => judge_outbound(r, m, t, policy, sum, f, &bad),
        _ => f.push(bad(format!("the {hook} chain accepts traffic: the appliance must never forward"))),
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
            Match::Dport(p, list) if (p == "tcp" || p == "udp") && list.len() == 1 && port.is_none() => port = Some((p.as_str(), list[0])),
            Match::Daddr(fam, v) if dest.is_none() => dest = Some((fam.as_str(), v)),
            _ => {
                f.push(bad("accepts outbound traffic the audit cannot match to an outbound flow".into()));
                return;
            }
        }
    }
    let Some((p, port)) = port else {
        f.push(bad("accepts outbound traffic to any port".into()));
        return;
    };
    let flows: Vec<&Flow> = policy.outbound.iter().filter(|fl| proto_word(fl.proto) == p && fl.port == port).collect();
    if flows.is_empty() {
        f.push(bad(format!("allows outbound {p} port {port}, which no outbound flow of the policy allows")));
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
                f.push(bad(format!("refers to the set `{name}`, which the table does not define")));
                return;
            };
            let hosts = flows.iter().find(|fl| {
                [firewall::Family::V4, firewall::Family::V6].iter().any(|fam| firewall::hosts_set(&fl.name, *fam) == name)
            });
            (format!("@{name}"), set.elements.clone(), hosts.map(|fl| fl.name.clone()))
        }
        list => (list.join(", "), list.to_vec(), None),
    };
    let allowed = |a: &String| flows.iter().any(|fl| fl.to.iter().any(|d| d == a));
    let outside: Vec<&String> = addrs.iter().filter(|a| !allowed(a)).collect();
    if !outside.is_empty() {
        f.push(bad(format!("allows outbound {p} port {port} to {}, which no outbound flow of the policy lists", outside.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))));
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
