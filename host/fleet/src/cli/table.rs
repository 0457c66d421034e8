//! The admin commands' output: aligned text tables for people, or the API's JSON with
//! `--json` for scripts. Times are shown as ages ("5m ago").

use anyhow::Result;
use serde::Serialize;

use crate::api::{
    AuditEntry, DeviceDetail, DeviceInfo, Report, RolloutDetail, RolloutInfo, TokenInfo,
};
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

/// The runtime cell: the unit's liveness and the metrics' summary
/// (`1/2 streaming (door stalled), p50 41.2 ms, cpu`), or only the liveness from devices that
/// send no summary.
fn runtime(r: &Report) -> String {
    match (&r.runtime, r.runtime_alive) {
        (Some(rt), true) => rt.to_string(),
        (Some(rt), false) => format!("DOWN, {rt}"),
        (None, true) => "alive".into(),
        (None, false) => "DOWN".into(),
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
                r.map_or("-".into(), runtime),
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
            "ID", "SERIAL", "CHANNEL", "TAGS", "VERSION", "SLOT", "HEALTH", "RUNTIME", "SEEN",
            "STATUS",
        ],
        &rows,
    )
}

/// One device and its reports.
pub fn device(d: &DeviceDetail) -> String {
    let mut out = devices(std::slice::from_ref(&d.device));
    out.push_str(&format!("\ncertificate sha256 {}\n", d.device.cert_sha256));
    out.push_str(&format!("enrolled {}\n", ago(Some(d.device.enrolled_at))));
    if let Some(rt) = d
        .device
        .last_report
        .as_ref()
        .and_then(|r| r.runtime.as_ref())
    {
        out.push_str(&format!("runtime metrics {}", rt.metrics.as_str()));
        if let Some(age) = rt.age_s {
            out.push_str(&format!(", {age}s old"));
        }
        if let Some(m) = &rt.model {
            out.push_str(&format!(
                "; model {} sha256 {} on {}{}",
                m.name,
                m.sha256,
                m.execution_provider,
                if m.fallback { " (CPU fallback)" } else { "" }
            ));
        }
        out.push_str(&format!(
            "; frames inferred {} dropped {}",
            rt.frames_inferred, rt.frames_dropped
        ));
        if let (Some(p50), Some(p95)) = (rt.latency_p50_ms, rt.latency_p95_ms) {
            out.push_str(&format!("; latency p50 {p50:.1} ms p95 {p95:.1} ms"));
        }
        out.push_str(&format!(
            "; cameras {} streaming {} stalled {}",
            rt.cameras, rt.streaming, rt.stalled
        ));
        if let Some(p) = &rt.problem {
            out.push_str(&format!(" ({p})"));
        }
        out.push('\n');
    }
    out.push('\n');
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
                runtime(r),
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

fn policy(r: &RolloutInfo) -> String {
    let p = &r.policy;
    let mut parts = Vec::new();
    if let Some(m) = p.max_failures {
        parts.push(format!(">{m} failed"));
    }
    if let Some(pct) = p.max_failure_percent {
        parts.push(format!(">{pct}% of {}+", p.min_tried));
    }
    parts.join(" or ")
}

/// The rollouts.
pub fn rollouts(all: &[RolloutInfo]) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|r| {
            let p = &r.progress;
            vec![
                r.id.to_string(),
                format!("{} {}", r.channel, r.version),
                match r.signed_state {
                    Some(s) if s != r.state => format!("{} (signed: {s})", r.state),
                    _ => r.state.to_string(),
                },
                r.selection.to_string(),
                r.waves.clone(),
                format!("{}/{}", p.named - p.pending.min(p.named), p.named),
                p.installed.to_string(),
                (p.failed_install + p.failed_health).to_string(),
                format!("{:.1}%", p.failure_percent),
                policy(r),
                ago(Some(r.updated_at)),
            ]
        })
        .collect();
    render(
        &[
            "ID",
            "RELEASE",
            "STATE",
            "DEVICES",
            "WAVES",
            "TRIED",
            "INSTALLED",
            "FAILED",
            "FAIL%",
            "HALTS AT",
            "UPDATED",
        ],
        &rows,
    )
}

/// One rollout: its row, its details, and each device's outcome.
pub fn rollout(d: &RolloutDetail) -> String {
    let r = &d.rollout;
    let p = &r.progress;
    let mut out = rollouts(std::slice::from_ref(r));
    out.push('\n');
    out.push_str(&format!(
        "started {} by {}\n",
        ago(Some(r.started_at)),
        r.created_by
    ));
    if let Some(ids) = &r.devices {
        out.push_str(&format!("devices {}\n", ids.join(",")));
    }
    if !r.pinned.is_empty() {
        out.push_str(&format!("pinned {}\n", r.pinned.join(",")));
    }
    for w in &r.wave_times {
        let when = (w.opens_at - db::now()).max(0);
        out.push_str(&format!(
            "wave {}% {}\n",
            w.percent,
            if when == 0 {
                "open".to_string()
            } else {
                format!("opens in {}m", (when + 59) / 60)
            }
        ));
    }
    if let Some(reason) = &r.halt_reason {
        out.push_str(&format!("halted: {reason}\n"));
    }
    out.push_str(&format!(
        "named {}, pending {}, started {}, installed {}, failed-install {}, failed-health {}, \
         failure rate {:.1}%\n\n",
        p.named,
        p.pending,
        p.started,
        p.installed,
        p.failed_install,
        p.failed_health,
        p.failure_percent
    ));
    let rows: Vec<Vec<String>> = d
        .outcomes
        .iter()
        .map(|o| {
            vec![
                o.device.clone(),
                o.outcome.as_str().to_string(),
                ago(Some(o.first_at)),
                ago(Some(o.at)),
                o.detail.clone(),
            ]
        })
        .collect();
    out.push_str(&render(
        &["DEVICE", "OUTCOME", "FIRST", "CHANGED", "DETAIL"],
        &rows,
    ));
    out
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
