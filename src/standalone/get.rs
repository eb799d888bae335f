//! `hookwarden get`: standalone state printed the way `kubectl get whi` prints it.

use std::fmt::Write as _;

use crate::crd::WebhookIntegration;

/// Output formats of `hookwarden get` (as `kubectl get -o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The table plus the URL column.
    Wide,
    /// Whole objects as YAML (a `List` unless a NAME is given).
    Yaml,
    /// Whole objects as JSON (a `List` unless a NAME is given).
    Json,
}

/// kubectl's human-readable age (`HumanDuration`): 45s, 3m10s, 25m, 5h12m, 13h, 3d4h, 40d, 2y.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        if d % 365 == 0 {
            format!("{}y", d / 365)
        } else {
            format!("{}y{}d", d / 365, d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age_of(time: Option<&jiff::Timestamp>, now: jiff::Timestamp) -> String {
    match time {
        Some(t) => human_age(now.as_second() - t.as_second()),
        None => "<unknown>".to_string(),
    }
}

/// One cell for `status.forwarding`: each target with what needs attention (dead
/// letters, pending forwards, an open circuit), else `ok`.
fn forwarding_summary(targets: &[crate::crd::ForwardStatus]) -> String {
    if targets.is_empty() {
        return "<none>".to_string();
    }
    targets
        .iter()
        .map(|t| {
            let mut notes = Vec::new();
            if t.dead_lettered > 0 {
                notes.push(format!("{} dead", t.dead_lettered));
            }
            if t.pending > 0 {
                notes.push(format!("{} pending", t.pending));
            }
            if let Some(c) = t.circuit.as_deref().filter(|c| *c != "closed") {
                notes.push(format!("circuit {c}"));
            }
            if notes.is_empty() {
                format!("{}:ok", t.name)
            } else {
                format!("{}:{}", t.name, notes.join("/"))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The Open cell: what the printer column shows (`status.incidents.openDisplay`), or for
/// a status written before that field, the count with `+` when truncated.
fn open_cell(incidents: &crate::crd::IncidentsStatus) -> String {
    incidents.open_display.clone().unwrap_or_else(|| {
        crate::domain::incident::state::open_display(
            usize::try_from(incidents.open).unwrap_or(0),
            incidents.truncated,
        )
    })
}

/// The table `kubectl get whi` prints (`wide` adds URL; `all_namespaces` adds NAMESPACE).
pub fn table(
    objects: &[WebhookIntegration],
    wide: bool,
    all_namespaces: bool,
    now: jiff::Timestamp,
) -> String {
    let mut header: Vec<&str> = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend(["NAME", "PROVIDER", "READY", "OPEN", "LAST DELIVERY"]);
    if wide {
        header.push("URL");
        header.push("FORWARDING");
    }
    header.push("AGE");
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for o in objects {
        let status = o.status.as_ref();
        let mut row = Vec::new();
        if all_namespaces {
            row.push(o.metadata.namespace.clone().unwrap_or_default());
        }
        row.push(o.metadata.name.clone().unwrap_or_default());
        row.push(o.spec.provider.to_string());
        row.push(
            status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map_or_else(|| "<none>".to_string(), |c| c.status.clone()),
        );
        row.push(
            status
                .and_then(|s| s.incidents.as_ref())
                .map_or_else(|| "<none>".to_string(), open_cell),
        );
        row.push(
            status
                .and_then(|s| s.deliveries.as_ref())
                .and_then(|d| d.last_received_time.as_ref())
                .map_or_else(|| "<none>".to_string(), |t| age_of(Some(&t.0), now)),
        );
        if wide {
            row.push(
                status
                    .and_then(|s| s.url.clone())
                    .unwrap_or_else(|| "<none>".to_string()),
            );
            row.push(forwarding_summary(
                status.map(|s| s.forwarding.as_slice()).unwrap_or_default(),
            ));
        }
        row.push(age_of(
            o.metadata.creation_timestamp.as_ref().map(|t| &t.0),
            now,
        ));
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}   ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Objects as kubectl prints them with `-o json`: the object itself, or a `List`.
pub fn as_json_value(objects: &[WebhookIntegration], single: bool) -> serde_json::Value {
    if single && let Some(o) = objects.first() {
        return serde_json::to_value(o).unwrap_or_default();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": objects,
        "metadata": {"resourceVersion": ""},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        for (secs, want) in [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (190, "3m10s"),
            (600, "10m"),
            (3 * 3600 + 120, "3h2m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (40 * 86_400, "40d"),
            (3 * 365 * 86_400, "3y"),
        ] {
            assert_eq!(human_age(secs), want, "{secs}s");
        }
    }

    /// Issue 18, finding 9: the Open cell says when the count is past what is listed,
    /// also for a status written before `openDisplay` existed.
    #[test]
    fn the_open_cell_marks_a_truncated_count() {
        let status = |json: serde_json::Value| -> crate::crd::IncidentsStatus {
            serde_json::from_value(json).expect("incidents status")
        };
        assert_eq!(open_cell(&status(serde_json::json!({"open": 3}))), "3");
        assert_eq!(
            open_cell(&status(serde_json::json!({"open": 811, "truncated": true}))),
            "811+"
        );
        assert_eq!(
            open_cell(&status(
                serde_json::json!({"open": 811, "truncated": true, "openDisplay": "811+"})
            )),
            "811+"
        );
    }
}
