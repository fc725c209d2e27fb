//! The status page as HTML: one self-contained document (inline CSS, inline SVG charts, no
//! script, nothing fetched from elsewhere) that reloads itself every [`REFRESH_SECONDS`].
//!
//! Elements a reader or a test looks for carry `class` and `data-*` attributes named after the
//! report's fields (`data-cluster`, `data-slot`, `data-backup`, `data-check`, ...).

use std::fmt::Write;

use pgwal::api::{
    BackupStatus, ClusterStatus, PostgresStatus, ReceiverStatus, StatusReport, WalHour,
};

use crate::jobs::replication::human_bytes;

/// How often the page reloads itself.
pub const REFRESH_SECONDS: u32 = 30;

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:20px;margin:0}
main{padding:12px 24px}
section.cluster{background:#fff;border-radius:6px;padding:12px 18px;margin:12px 0;box-shadow:0 1px 2px #0002}
h2{margin:4px 0 8px;font-size:18px}
h3{margin:14px 0 6px;font-size:15px;color:#39415a}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:8px 24px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #e3e6ec;white-space:nowrap}
th{color:#5a6275;font-weight:600}
.mono{font-family:ui-monospace,monospace}
td.wrap{white-space:normal;word-break:break-all}
.ok{color:#17803d}.bad{color:#c0262d;font-weight:600}.warn{color:#b06a00}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;color:#fff}
.badge.ok{background:#17803d;color:#fff}.badge.bad{background:#c0262d;color:#fff}
ul.failed{margin:4px 0;padding-left:18px}ul.failed li{margin:4px 0}
.fix{color:#39415a}
.muted{color:#7a8194}
svg{display:block;margin:4px 0}
svg text{font-size:10px;fill:#5a6275}
";

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `3725` s → `1h 2m 5s`.
fn duration_text(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

fn opt(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "—".into(), esc)
}

/// The whole page.
pub fn render(report: &StatusReport, refresh_seconds: u32) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let st = &report.storage;
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{refresh_seconds}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>wal-archive status</title><style>{STYLE}</style></head><body>\
         <header><h1>wal-archive</h1><span id=\"generated\" data-generated=\"{gen}\">as of {gen} \
         (refreshes every {refresh_seconds} s)</span><span>version {ver}</span>",
        gen = esc(&report.generated_at),
        ver = esc(&report.version),
    );
    let _ = write!(
        h,
        "<span id=\"storage\" data-used-bytes=\"{used}\" data-free-bytes=\"{free}\">storage \
         {kind} {loc}: <b>{used_h}</b> used{free_h}</span></header><main>",
        used = st.used_bytes,
        free = st.free_bytes.map_or(String::new(), |f| f.to_string()),
        kind = esc(&st.kind),
        loc = esc(&st.location),
        used_h = human_bytes(st.used_bytes),
        free_h = match (st.free_bytes, st.total_bytes) {
            (Some(f), Some(t)) => format!(
                ", <b>{}</b> free of {}{}",
                human_bytes(f),
                human_bytes(t),
                storage_bar(st.used_bytes, f, t)
            ),
            _ => String::new(),
        },
    );
    if report.clusters.is_empty() {
        h.push_str("<p class=\"muted\">No cluster yet: the first push or backup creates one.</p>");
    }
    for c in &report.clusters {
        cluster(&mut h, c, &report.generated_at);
    }
    h.push_str("</main></body></html>\n");
    h
}

/// A small bar: the archive's share, the rest used by others, and free space.
fn storage_bar(used: u64, free: u64, total: u64) -> String {
    if total == 0 {
        return String::new();
    }
    let w = 160.0;
    let x_used = (used as f64 / total as f64 * w).clamp(1.0, w);
    let x_free = (free as f64 / total as f64 * w).clamp(0.0, w);
    format!(
        "<svg id=\"storage-bar\" width=\"{w}\" height=\"10\" style=\"display:inline;margin-left:8px\" \
         role=\"img\" aria-label=\"storage\"><rect width=\"{w}\" height=\"10\" fill=\"#8891a8\"/>\
         <rect width=\"{x_used:.1}\" height=\"10\" fill=\"#4f7cff\"/><rect x=\"{:.1}\" \
         width=\"{x_free:.1}\" height=\"10\" fill=\"#d7dbe4\"/></svg>",
        w - x_free
    )
}

fn cluster(h: &mut String, c: &ClusterStatus, now: &str) {
    let name = esc(&c.cluster);
    let failed: Vec<_> = c.checks.iter().filter(|k| !k.ok).collect();
    let _ = write!(
        h,
        "<section class=\"cluster\" id=\"cluster-{name}\" data-cluster=\"{name}\"><h2>{name} \
         <span class=\"badge {cls}\" data-failed-checks=\"{n}\">{badge}</span> \
         <span class=\"muted mono\">system {sysid}</span></h2><div class=\"grid\"><div>",
        cls = if failed.is_empty() { "ok" } else { "bad" },
        n = failed.len(),
        badge = if failed.is_empty() {
            format!("all {} checks pass", c.checks.len())
        } else {
            format!("{} failing", failed.len())
        },
        sysid = opt(&c.system_identifier),
    );

    // The archive.
    let w = &c.wal;
    let age = w
        .last_archived_age_seconds
        .map_or_else(|| "—".into(), |a| format!("{} ago", duration_text(a)));
    let _ = write!(
        h,
        "<h3>WAL archive</h3><table><tr><th>last WAL archived</th><td class=\"mono last-wal\" \
         data-last-wal=\"{last}\">{last}</td></tr><tr><th>archived</th><td class=\"last-wal-age\" \
         data-age-seconds=\"{age_s}\">{at} ({age})</td></tr><tr><th>files</th><td>{files} \
         ({bytes}, {stored} stored)</td></tr><tr><th>timelines</th><td class=\"mono wrap\">{tl}</td></tr>\
         <tr><th>gaps</th><td class=\"gaps {gcls} wrap\" data-gaps=\"{ng}\">{gaps}</td></tr>{missing}</table>",
        last = opt(&w.last_segment),
        age_s = w
            .last_archived_age_seconds
            .map_or(String::new(), |a| a.to_string()),
        at = opt(&w.last_archived_at),
        files = w.files,
        bytes = human_bytes(w.bytes),
        stored = human_bytes(w.stored_bytes),
        tl = if w.timelines.is_empty() {
            "—".to_string()
        } else {
            w.timelines
                .iter()
                .map(|t| {
                    format!(
                        "{}: {} .. {} ({} segments)",
                        t.timeline,
                        esc(&t.first),
                        esc(&t.last),
                        t.segments
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>")
        },
        gcls = if w.gaps.is_empty() { "ok" } else { "bad" },
        ng = w.gaps.len(),
        gaps = if w.gaps.is_empty() {
            "none".to_string()
        } else {
            w.gaps.iter().map(|g| esc(g)).collect::<Vec<_>>().join("<br>")
        },
        missing = if w.missing > 0 {
            format!(
                "<tr><th>missing objects</th><td class=\"bad\">{}</td></tr>",
                w.missing
            )
        } else {
            String::new()
        },
    );
    receiver(h, c.receiver.as_ref());
    h.push_str("</div><div>");
    postgres(h, c.postgres.as_ref());
    h.push_str("</div></div>");

    // Failing checks first: they are what to act on.
    let _ = write!(h, "<h3>Checks</h3>");
    if failed.is_empty() {
        let _ = write!(
            h,
            "<p class=\"ok checks-ok\">all {} checks pass</p>",
            c.checks.len()
        );
    } else {
        h.push_str("<ul class=\"failed\">");
        for k in &failed {
            let _ = write!(
                h,
                "<li class=\"check-failed\" data-check=\"{n}\"><b class=\"bad\">{n}</b>: {m}{fix}</li>",
                n = esc(&k.name),
                m = esc(&k.message),
                fix = k.hint.as_deref().map_or(String::new(), |f| format!(
                    "<br><span class=\"fix\">fix: {}</span>",
                    esc(f)
                )),
            );
        }
        h.push_str("</ul>");
    }

    h.push_str("<div class=\"grid\"><div>");
    let _ = write!(h, "<h3>WAL per hour (last 48 hours)</h3>");
    wal_chart(h, &c.cluster, &w.hours, now);
    h.push_str("</div><div><h3>Backup durations</h3>");
    duration_chart(h, &c.cluster, &c.backups);
    h.push_str("</div></div>");
    backups(h, c);
    h.push_str("</section>");
}

fn receiver(h: &mut String, r: Option<&ReceiverStatus>) {
    let Some(r) = r else {
        return;
    };
    let cls = if r.state == "streaming" { "ok" } else { "bad" };
    let _ = write!(
        h,
        "<h3>Receiver</h3><table id=\"receiver\"><tr><th>state</th><td class=\"{cls} receiver-state\" \
         data-state=\"{state}\">{state} since {since}{reason}</td></tr><tr><th>slot</th><td \
         class=\"mono\">{slot} ({active})</td></tr><tr><th>lag</th><td data-lag-bytes=\"{lag_b}\">{lag}\
         </td></tr><tr><th>flushed</th><td class=\"mono\">{flushed} (server {server})</td></tr></table>",
        state = esc(&r.state),
        since = esc(&r.since),
        reason = r
            .reason
            .as_deref()
            .map_or(String::new(), |m| format!(": {}", esc(m))),
        slot = opt(&r.slot),
        active = if r.slot_active { "active" } else { "not held" },
        lag_b = r.lag_bytes.map_or(String::new(), |l| l.to_string()),
        lag = r.lag_bytes.map_or("—".into(), human_bytes),
        flushed = opt(&r.flushed_lsn),
        server = opt(&r.server_lsn),
    );
}

fn postgres(h: &mut String, pg: Option<&PostgresStatus>) {
    h.push_str("<h3>PostgreSQL</h3>");
    let Some(pg) = pg else {
        h.push_str("<p class=\"muted\" id=\"no-conninfo\">no conninfo: set [clusters.NAME] conninfo to see archiver failures, slots and standbys</p>");
        return;
    };
    if let Some(e) = &pg.error {
        let _ = write!(h, "<p class=\"bad pg-error\">{}</p>", esc(e));
    }
    if let Some(a) = &pg.archiver {
        let _ = write!(
            h,
            "<table class=\"archiver\" data-failed-count=\"{fc}\" data-failing=\"{failing}\"><tr>\
             <th>archiver</th><td class=\"{cls}\">{state}</td></tr><tr><th>archived</th><td>{ac}, \
             last {law} at {lat}</td></tr><tr><th>failures</th><td>{fc}{lf}</td></tr></table>",
            fc = a.failed_count,
            failing = a.failing,
            cls = if a.failing { "bad" } else { "ok" },
            state = if a.failing {
                "failing"
            } else {
                "no failure since the last success"
            },
            ac = a.archived_count,
            law = opt(&a.last_archived_wal),
            lat = opt(&a.last_archived_time),
            lf = match (&a.last_failed_wal, &a.last_failed_time) {
                (Some(w), Some(t)) => format!(", last on {} at {}", esc(w), esc(t)),
                _ => String::new(),
            },
        );
    }
    h.push_str(
        "<table class=\"slots\"><tr><th>slot</th><th>active</th><th>wal_status</th>\
         <th>retained</th></tr>",
    );
    if pg.slots.is_empty() {
        h.push_str("<tr><td colspan=\"4\" class=\"muted\">no physical slot</td></tr>");
    }
    for s in &pg.slots {
        let _ = write!(
            h,
            "<tr class=\"slot\" data-slot=\"{n}\" data-active=\"{a}\" data-retained-bytes=\"{rb}\">\
             <td class=\"mono\">{n}</td><td class=\"{acls}\">{act}</td><td>{ws}</td><td>{r}</td></tr>",
            n = esc(&s.slot_name),
            a = s.active,
            rb = s.retained_bytes.map_or(String::new(), |b| b.to_string()),
            acls = if s.active { "ok" } else { "warn" },
            act = if s.active { "active" } else { "inactive" },
            ws = opt(&s.wal_status),
            r = s.retained_bytes.map_or("—".into(), human_bytes),
        );
    }
    h.push_str(
        "</table><table class=\"standbys\"><tr><th>standby</th><th>state</th><th>sent</th>\
         <th>write</th><th>flush</th><th>replay</th><th>replay lag</th></tr>",
    );
    if pg.standbys.is_empty() {
        h.push_str("<tr><td colspan=\"7\" class=\"muted\">no standby connected</td></tr>");
    }
    let lag = |v: Option<u64>| v.map_or("—".into(), human_bytes);
    for s in &pg.standbys {
        let _ = write!(
            h,
            "<tr class=\"standby\" data-standby=\"{n}\" data-replay-lag-bytes=\"{rl}\"><td>{n} \
             <span class=\"muted\">{c}</span></td><td>{st} ({sync})</td><td>{a}</td><td>{b}</td>\
             <td>{f}</td><td>{r}</td><td>{t}</td></tr>",
            n = esc(&s.application_name),
            rl = s.replay_lag_bytes.map_or(String::new(), |b| b.to_string()),
            c = esc(&s.client),
            st = esc(&s.state),
            sync = esc(&s.sync_state),
            a = lag(s.sent_lag_bytes),
            b = lag(s.write_lag_bytes),
            f = lag(s.flush_lag_bytes),
            r = lag(s.replay_lag_bytes),
            t = s
                .replay_lag_ms
                .map_or("—".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
        );
    }
    h.push_str("</table>");
}

/// The hours of the chart: the last 48 hours up to `now` (`YYYY-MM-DDTHH`).
fn chart_hours(now: &str) -> Vec<String> {
    let Ok(end) = humantime::parse_rfc3339_weak(now) else {
        return Vec::new();
    };
    (0..crate::status::WAL_HOURS)
        .rev()
        .filter_map(|back| {
            let t = end.checked_sub(std::time::Duration::from_secs(back * 3600))?;
            Some(crate::catalog::rfc3339(t).chars().take(13).collect())
        })
        .collect()
}

const CHART_W: f64 = 560.0;
const CHART_H: f64 = 120.0;

fn wal_chart(h: &mut String, cluster: &str, hours: &[WalHour], now: &str) {
    let slots = chart_hours(now);
    let max = hours.iter().map(|x| x.bytes).max().unwrap_or(0).max(1);
    let total: u64 = hours.iter().map(|x| x.bytes).sum();
    let bw = CHART_W / slots.len().max(1) as f64;
    let _ = write!(
        h,
        "<svg class=\"chart wal-chart\" id=\"wal-chart-{c}\" width=\"{w}\" height=\"{ht}\" \
         viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"WAL archived per hour\" \
         data-total-bytes=\"{total}\"><line x1=\"0\" y1=\"{CHART_H}\" x2=\"{CHART_W}\" \
         y2=\"{CHART_H}\" stroke=\"#b8bfcc\"/><text x=\"2\" y=\"10\">max {mx}/h</text>",
        c = esc(cluster),
        w = CHART_W,
        ht = CHART_H + 14.0,
        mx = human_bytes(max),
    );
    for (i, slot) in slots.iter().enumerate() {
        let Some(x) = hours.iter().find(|x| &x.hour == slot) else {
            continue;
        };
        let bh = (x.bytes as f64 / max as f64 * (CHART_H - 14.0)).max(1.0);
        let _ = write!(
            h,
            "<rect class=\"bar\" data-hour=\"{hr}\" data-bytes=\"{b}\" data-files=\"{f}\" \
             x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{bh:.1}\" fill=\"#4f7cff\">\
             <title>{hr}:00 UTC: {f} files, {bh_t}</title></rect>",
            hr = esc(slot),
            b = x.bytes,
            f = x.files,
            x = i as f64 * bw + 0.5,
            y = CHART_H - bh,
            w = (bw - 1.0).max(1.0),
            bh_t = human_bytes(x.bytes),
        );
    }
    if let (Some(first), Some(last)) = (slots.first(), slots.last()) {
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{y}\">{a}h</text><text x=\"{xe}\" y=\"{y}\" \
             text-anchor=\"end\">{b}h UTC</text>",
            y = CHART_H + 12.0,
            a = esc(first),
            xe = CHART_W,
            b = esc(last),
        );
    }
    h.push_str("</svg>");
    if hours.is_empty() {
        h.push_str("<p class=\"muted\">no WAL archived in the last 48 hours</p>");
    }
}

fn duration_chart(h: &mut String, cluster: &str, backups: &[BackupStatus]) {
    // Oldest on the left; at most the 30 newest.
    let shown: Vec<&BackupStatus> = backups
        .iter()
        .filter(|b| b.duration_seconds.is_some())
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if shown.is_empty() {
        h.push_str("<p class=\"muted\">no finished backup</p>");
        return;
    }
    let max = shown
        .iter()
        .filter_map(|b| b.duration_seconds)
        .max()
        .unwrap_or(0)
        .max(1);
    let bw = (CHART_W / shown.len() as f64).min(60.0);
    let _ = write!(
        h,
        "<svg class=\"chart duration-chart\" id=\"duration-chart-{c}\" width=\"{w}\" \
         height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"backup durations\">\
         <line x1=\"0\" y1=\"{CHART_H}\" x2=\"{CHART_W}\" y2=\"{CHART_H}\" stroke=\"#b8bfcc\"/>\
         <text x=\"2\" y=\"10\">max {mx}</text>",
        c = esc(cluster),
        w = CHART_W,
        ht = CHART_H + 14.0,
        mx = duration_text(max),
    );
    for (i, b) in shown.iter().enumerate() {
        let d = b.duration_seconds.unwrap_or(0);
        let bh = (d as f64 / max as f64 * (CHART_H - 14.0)).max(2.0);
        let fill = match b.status.as_str() {
            "done" => "#17803d",
            "failed" => "#c0262d",
            _ => "#8891a8",
        };
        let _ = write!(
            h,
            "<rect class=\"bar\" data-backup=\"{id}\" data-seconds=\"{d}\" x=\"{x:.1}\" \
             y=\"{y:.1}\" width=\"{w:.1}\" height=\"{bh:.1}\" fill=\"{fill}\"><title>{id}: {dt}, \
             {st}</title></rect>",
            id = esc(&b.id),
            x = i as f64 * bw + 0.5,
            y = CHART_H - bh,
            w = (bw - 2.0).max(1.0),
            dt = duration_text(d),
            st = esc(&b.status),
        );
    }
    h.push_str("</svg>");
}

fn backups(h: &mut String, c: &ClusterStatus) {
    let _ = write!(
        h,
        "<h3>Backups ({n}, {stored} stored)</h3>",
        n = c.backups.len(),
        stored = human_bytes(c.backup_stored_bytes)
    );
    if c.backups.is_empty() {
        let _ = write!(
            h,
            "<p class=\"muted\">no backup: <span class=\"mono\">wal-archive backup --cluster {}</span></p>",
            esc(&c.cluster)
        );
        return;
    }
    timeline_strip(h, &c.cluster, &c.backups);
    h.push_str(
        "<table class=\"backups\"><tr><th>backup</th><th>status</th><th>timeline</th>\
         <th>began</th><th>took</th><th>size</th><th>stored</th><th>retention</th><th>keep</th>\
         <th>last drill</th></tr>",
    );
    for b in &c.backups {
        let drill = match &b.last_drill {
            None => "<span class=\"muted drill none\">no drill</span>".to_string(),
            Some(d) => format!(
                "<span class=\"drill {cls}\" data-drill-result=\"{r}\">{r} {at}{e}</span>",
                cls = if d.result == "ok" { "ok" } else { "bad" },
                r = esc(&d.result),
                at = esc(d.ended_at.as_deref().unwrap_or(&d.started_at)),
                e = d
                    .error
                    .as_deref()
                    .map_or(String::new(), |e| format!(": {}", esc(e))),
            ),
        };
        let _ = write!(
            h,
            "<tr class=\"backup\" data-backup=\"{id}\" data-status=\"{st}\" data-retention=\"{ret}\" \
             data-keep=\"{keep}\" data-size-bytes=\"{size}\"><td class=\"mono\">{id}</td>\
             <td class=\"{scls}\">{st}</td><td>{tl}</td><td>{began}</td><td>{took}</td>\
             <td>{size_h}</td><td>{stored_h}</td><td>{ret_t}</td><td>{keep_t}</td><td>{drill}</td></tr>",
            id = esc(&b.id),
            st = esc(&b.status),
            ret = b.retention.as_deref().map_or(String::new(), esc),
            keep = b.keep,
            size = b.size_bytes,
            scls = match b.status.as_str() {
                "done" => "ok",
                "failed" => "bad",
                _ => "warn",
            },
            tl = b.timeline.map_or("—".into(), |t| t.to_string()),
            began = esc(&b.begin_time),
            took = b.duration_seconds.map_or("—".into(), duration_text),
            size_h = human_bytes(b.size_bytes),
            stored_h = human_bytes(b.stored_bytes),
            ret_t = b.retention.as_deref().map_or("—".into(), esc),
            keep_t = if b.keep { "kept" } else { "—" },
        );
    }
    h.push_str("</table>");
}

/// The backups as marks on a time axis from the oldest to now, coloured by retention class;
/// a kept backup has a ring.
fn timeline_strip(h: &mut String, cluster: &str, backups: &[BackupStatus]) {
    let times: Vec<(&BackupStatus, f64)> = backups
        .iter()
        .filter_map(|b| {
            let t = humantime::parse_rfc3339_weak(&b.begin_time).ok()?;
            let s = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
            Some((b, s))
        })
        .collect();
    let (Some(lo), Some(hi)) = (
        times.iter().map(|x| x.1).reduce(f64::min),
        times.iter().map(|x| x.1).reduce(f64::max),
    ) else {
        return;
    };
    let span = (hi - lo).max(1.0);
    let _ = write!(
        h,
        "<svg class=\"backup-timeline\" id=\"backup-timeline-{c}\" width=\"{w}\" height=\"34\" \
         viewBox=\"0 0 {w} 34\" role=\"img\" aria-label=\"backups on a timeline\"><line x1=\"8\" \
         y1=\"14\" x2=\"{x2}\" y2=\"14\" stroke=\"#b8bfcc\"/>",
        c = esc(cluster),
        w = CHART_W,
        x2 = CHART_W - 8.0,
    );
    for (b, t) in &times {
        let x = 8.0 + (t - lo) / span * (CHART_W - 16.0);
        let fill = match (b.status.as_str(), b.retention.as_deref()) {
            ("failed", _) => "#c0262d",
            (_, Some("obsolete")) => "#b8bfcc",
            ("done", _) => "#17803d",
            _ => "#b06a00",
        };
        let ring = if b.keep {
            " stroke=\"#1d2330\" stroke-width=\"2\""
        } else {
            ""
        };
        let _ = write!(
            h,
            "<circle class=\"mark\" data-backup=\"{id}\" cx=\"{x:.1}\" cy=\"14\" r=\"6\" \
             fill=\"{fill}\"{ring}><title>{id}: {st}, {ret}{keep}, {size}</title></circle>",
            id = esc(&b.id),
            st = esc(&b.status),
            ret = b.retention.as_deref().map_or("no policy".into(), esc),
            keep = if b.keep { ", kept" } else { "" },
            size = human_bytes(b.size_bytes),
        );
    }
    let first = times.last().map(|x| x.0.begin_time.as_str()).unwrap_or("");
    let last = times.first().map(|x| x.0.begin_time.as_str()).unwrap_or("");
    let _ = write!(
        h,
        "<text x=\"8\" y=\"32\">{}</text><text x=\"{}\" y=\"32\" text-anchor=\"end\">{}</text></svg>",
        esc(first),
        CHART_W - 8.0,
        esc(last)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwal::api::{CheckItem, SlotStatus, WalArchiveStatus};

    #[test]
    fn text_is_escaped_and_facts_are_marked() {
        let report = StatusReport {
            generated_at: "2026-12-01T13:00:00Z".into(),
            clusters: vec![ClusterStatus {
                cluster: "main".into(),
                wal: WalArchiveStatus {
                    last_segment: Some("000000010000000000000003".into()),
                    hours: vec![WalHour {
                        hour: "2026-12-01T12".into(),
                        files: 3,
                        bytes: 3 << 20,
                    }],
                    ..Default::default()
                },
                postgres: Some(PostgresStatus {
                    slots: vec![SlotStatus {
                        slot_name: "s1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                backups: vec![BackupStatus {
                    id: "20261201T120000".into(),
                    status: "done".into(),
                    begin_time: "2026-12-01T12:00:00Z".into(),
                    duration_seconds: Some(5),
                    ..Default::default()
                }],
                checks: vec![CheckItem {
                    name: "x".into(),
                    ok: false,
                    message: "<script>alert(1)</script>".into(),
                    hint: Some("do \"this\"".into()),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let page = render(&report, 30);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("fix: do &quot;this&quot;"));
        assert!(page.contains("data-last-wal=\"000000010000000000000003\""));
        assert!(page.contains("data-hour=\"2026-12-01T12\""));
        assert!(page.contains("data-slot=\"s1\""));
        assert!(page.contains("no drill"));
        assert!(page.contains("http-equiv=\"refresh\""));
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
