//! The admin commands' output: aligned text tables for people, or the API's JSON with
//! `--json` for scripts. Times are shown as ages ("5m ago").

use anyhow::Result;
use serde::Serialize;

use crate::api::{AuditEntry, DeviceDetail, DeviceInfo, TokenInfo};
use crate::db;

/// Print `value` as pretty JSON, or as the table `render` makes of it.
pub fn print_or_json<T: Serialize + ?Sized>(
    json: bool,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", render(value));
    }
    Ok(())
}

/// An aligned table: a header row and rows, columns two spaces apart.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            text.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// How long ago a Unix time was ("-" for none).
pub fn ago(t: Option<i64>) -> String {
    let Some(t) = t else { return "-".into() };
    let s = (db::now() - t).max(0);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn health(d: &DeviceInfo) -> String {
    match d.last_report.as_ref().and_then(|r| r.health.as_ref()) {
        Some(h) if h.passed => "passed".into(),
        Some(_) => "FAILED".into(),
        None => "-".into(),
    }
}

/// The device list.
pub fn devices(all: &[DeviceInfo]) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|d| {
            let r = d.last_report.as_ref();
            vec![
                d.id.clone(),
                d.serial.clone(),
                d.channel.clone(),
                d.tags.join(","),
                r.map_or("-".into(), |r| r.version.clone()),
                r.map_or("-".into(), |r| r.slot.clone()),
                health(d),
                ago(d.last_seen_at),
                if d.revoked_at.is_some() {
                    "REVOKED".into()
                } else {
                    "active".into()
                },
            ]
        })
        .collect();
    render(
        &[
            "ID", "SERIAL", "CHANNEL", "TAGS", "VERSION", "SLOT", "HEALTH", "SEEN", "STATUS",
        ],
        &rows,
    )
}

/// One device and its reports.
pub fn device(d: &DeviceDetail) -> String {
    let mut out = devices(std::slice::from_ref(&d.device));
    out.push_str(&format!("\ncertificate sha256 {}\n", d.device.cert_sha256));
    out.push_str(&format!("enrolled {}\n\n", ago(Some(d.device.enrolled_at))));
    let rows: Vec<Vec<String>> = d
        .history
        .iter()
        .map(|h| {
            let r = &h.report;
            vec![
                ago(Some(h.received_at)),
                r.version.clone(),
                r.slot.clone(),
                r.slots
                    .iter()
                    .map(|s| format!("{}:{}", s.slot, s.state))
                    .collect::<Vec<_>>()
                    .join(" "),
                r.floor.to_string(),
                r.last_update
                    .as_ref()
                    .map_or("-".into(), |u| format!("{}: {}", u.result, u.journal)),
                r.health.as_ref().map_or("-".into(), |h| {
                    if h.passed {
                        "passed".into()
                    } else {
                        format!("FAILED {}", h.detail)
                    }
                }),
                if r.runtime_alive { "alive" } else { "DOWN" }.into(),
            ]
        })
        .collect();
    out.push_str(&render(
        &[
            "RECEIVED",
            "VERSION",
            "SLOT",
            "SLOTS",
            "FLOOR",
            "LAST UPDATE",
            "HEALTH",
            "RUNTIME",
        ],
        &rows,
    ));
    out
}

/// The API tokens.
pub fn tokens(all: &[TokenInfo]) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.role.to_string(),
                ago(Some(t.created_at)),
                t.created_by.clone(),
                t.revoked_at
                    .map_or("active".into(), |r| format!("REVOKED {}", ago(Some(r)))),
            ]
        })
        .collect();
    render(&["ID", "NAME", "ROLE", "CREATED", "BY", "STATUS"], &rows)
}

/// The audit log.
pub fn audit(lines: &[AuditEntry]) -> String {
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.id.to_string(),
                ago(Some(l.at)),
                l.actor.clone(),
                l.action.clone(),
                l.target.clone(),
                l.detail.to_string(),
            ]
        })
        .collect();
    render(&["#", "WHEN", "WHO", "WHAT", "ON", "DETAIL"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = render(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(t, "A          LONGER\nwide cell  x\ny          z\n");
        assert_eq!(ago(None), "-");
        assert_eq!(ago(Some(db::now() - 300)), "5m ago");
    }
}
