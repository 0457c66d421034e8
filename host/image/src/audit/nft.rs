//! A reader for the nftables ruleset an image carries (`/etc/nftables.conf`, nft(8) syntax);
//! [`super::firewall`] judges what it reads against the image's policy.
//!
//! The reader understands the declarative form (`table FAMILY NAME { chain ... set ...
//! counter ... }`, as written by the generator and as `nft list ruleset` prints it) and,
//! within rules, the matches the generator writes plus the common ones. Anything it does not
//! understand is kept (`Rule::unknown`, `Ruleset::other`), so the judgement can refuse it.

use serde::Serialize;

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
            (Some("chain"), true) => t
                .chains
                .push(parse_chain(c, w.get(1).cloned().unwrap_or_default())),
            (Some("set"), true) => t
                .sets
                .push(parse_set(c, w.get(1).cloned().unwrap_or_default())),
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
#[cfg(test)]
pub(crate) fn parse_rule_text(text: &str) -> Rule {
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
                r.matches
                    .push(Match::Daddr(a.to_string(), values(&w, &mut i)));
            }
            ("ip" | "ip6", Some("saddr")) => {
                i += 1;
                r.matches
                    .push(Match::Saddr(a.to_string(), values(&w, &mut i)));
            }
            ("icmp" | "icmpv6", Some("type")) => {
                i += 1;
                r.matches
                    .push(Match::IcmpType(a.to_string(), values(&w, &mut i)));
            }
            ("ip6", Some("hoplimit")) => {
                i += 1;
                r.matches
                    .push(Match::HopLimit(values(&w, &mut i).join(",")));
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
