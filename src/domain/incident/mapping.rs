//! Delivery body → incident events: provider presets, `spec.incidents` overrides, and
//! the fully user-defined mapping of `generic` (and any other provider).
//!
//! A [`Mapping`] is compiled once per integration ([`Mapping::for_spec`]); a bad
//! expression is a spec error the controller shows as a condition. [`Mapping::extract`]
//! runs per delivery; a payload it cannot map (no id) is the sender's mistake, answered
//! 400.
//!
//! # Overrides
//!
//! Each `…From` field of `spec.incidents` is either a JSON pointer (it starts with `/`)
//! or a CEL expression. CEL sees `body` (the whole delivery), `alert` (the alert being
//! mapped: one element of `alerts` for Alertmanager and Grafana, else the body again) and
//! `eventType` (the provider's event type, or null). JSON pointers are resolved against
//! `alert`, so `/labels/team` works for Alertmanager as `/team` does for a flat body.
//! A field set in the spec replaces the preset's; an expression that finds nothing
//! (missing key) counts as absent, so the next default applies (for title, severity,
//! link and time also an expression that fails on a payload; for the id and
//! `resolvedWhen` that refuses the delivery). `resolvedWhen` is CEL
//! returning a bool; `severityMap` translates raw severities before the shared
//! normalisation ([`Severity::normalise`]).
//!
//! # Event time
//!
//! Presets use the sender's time of the state change where the payload has one
//! (Datadog `date`, Alertmanager/Grafana `startsAt`/`endsAt`, PagerDuty
//! `occurred_at`); Sentry payloads carry no such time (only when the error was seen), so
//! Sentry events use the arrival time. `timeFrom` accepts RFC 3339 text or Unix time
//! (seconds, or milliseconds when the number is that large).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use cel::common::ast::IdedExpr;
use cel::{Context, Env, ExecutionError, Program};
use serde_json::Value;

use super::cost::{self, Bounds, Interrupt};
use super::{IncidentEvent, Severity};
use crate::crd::{IncidentMapping, ProviderKind, WebhookIntegrationSpec};
use crate::domain::json::{Scalar, TopLevel};

/// The payload to paste into Datadog's Webhooks integration (Integrations → Webhooks →
/// New, "Payload" field) for a `provider: datadog` integration:
///
/// ```json
/// {
///   "id": "$ID",
///   "aggreg_key": "$AGGREG_KEY",
///   "alert_name": "$EVENT_TITLE",
///   "alert_type": "$ALERT_TYPE",
///   "alert_status": "$ALERT_STATUS",
///   "alert_transition": "$ALERT_TRANSITION",
///   "severity": "$ALERT_PRIORITY",
///   "message": "$EVENT_MSG",
///   "host": "$HOSTNAME",
///   "tags": "$TAGS",
///   "link": "$LINK",
///   "snapshot": "$SNAPSHOT",
///   "date": "$DATE",
///   "last_updated": "$LAST_UPDATED",
///   "alert_id": "$ALERT_ID",
///   "alert_cycle_key": "$ALERT_CYCLE_KEY"
/// }
/// ```
///
/// How the preset reads it: the incident key is `aggreg_key` (the same for a monitor
/// group's trigger and recovery), else `id`; `alert_transition` `Recovered` resolves and
/// every other transition (`Triggered`, `Re-Triggered`, `Warn`, `No Data`, `Renotify`, …)
/// opens or updates (with no transition, `alert_type` `success` resolves); severity is the
/// monitor priority `P1`…`P5`, else `alert_type` (`error` → high, `warning` → medium);
/// the title is `alert_name` without Datadog's leading `[Triggered]`-style tags; the
/// event time is `date` (epoch milliseconds).
pub const DATADOG_TEMPLATE: &str = r#"{
  "id": "$ID",
  "aggreg_key": "$AGGREG_KEY",
  "alert_name": "$EVENT_TITLE",
  "alert_type": "$ALERT_TYPE",
  "alert_status": "$ALERT_STATUS",
  "alert_transition": "$ALERT_TRANSITION",
  "severity": "$ALERT_PRIORITY",
  "message": "$EVENT_MSG",
  "host": "$HOSTNAME",
  "tags": "$TAGS",
  "link": "$LINK",
  "snapshot": "$SNAPSHOT",
  "date": "$DATE",
  "last_updated": "$LAST_UPDATED",
  "alert_id": "$ALERT_ID",
  "alert_cycle_key": "$ALERT_CYCLE_KEY"
}"#;

/// Longest incident id accepted; ids are keys on the status, not documents.
pub const MAX_ID_BYTES: usize = 256;
/// Titles are cut to this many characters on the status.
pub const MAX_TITLE_CHARS: usize = 256;
/// Longer links are dropped rather than cut (a cut URL is a broken one).
pub const MAX_LINK_BYTES: usize = 2048;

/// Why a mapping cannot be built (spec errors: shown as a condition until the spec
/// changes) or a delivery cannot be mapped (payload errors: answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// A `…From` or `resolvedWhen` expression does not parse.
    #[error("spec.incidents.{field}: {expr:?} is not a valid CEL expression: {message}")]
    InvalidExpression {
        field: &'static str,
        expr: String,
        message: String,
    },
    /// A JSON pointer with a bad escape.
    #[error(
        "spec.incidents.{field}: JSON pointer {expr:?} is invalid: `~` must be followed by 0 or 1"
    )]
    InvalidPointer { field: &'static str, expr: String },
    /// The provider has no preset, so the spec must say where the incident id is.
    #[error(
        "spec.incidents.idFrom is required: provider {provider} has no preset incident mapping"
    )]
    MissingIdFrom { provider: &'static str },
    /// A severityMap value outside the five levels.
    #[error(
        "spec.incidents.severityMap[{key:?}] is {value:?}: use critical, high, medium, low or info"
    )]
    InvalidSeverityMap { key: String, value: String },
    /// The delivery has no usable incident id where the mapping looks for it.
    #[error("payload has no incident id at {from} (a non-empty string or number is required)")]
    MissingId { from: String },
    /// The incident id is implausibly long.
    #[error("incident id at {from} is longer than {max} bytes", max = MAX_ID_BYTES)]
    IdTooLong { from: String },
    /// An expression failed on this payload for another reason than a missing key.
    #[error("spec.incidents.{field} failed on this payload: {message}")]
    Evaluation {
        field: &'static str,
        message: String,
    },
    /// `resolvedWhen` returned something else than a bool.
    #[error("spec.incidents.resolvedWhen must return a bool, it returned a {got}")]
    NotBool { got: String },
    /// The body does not have the shape the provider always sends.
    #[error("payload is not a {provider} webhook: {reason}")]
    Malformed {
        provider: &'static str,
        reason: &'static str,
    },
    /// An expression's worst case over a body of the allowed size is above the budget
    /// ([`cost::MAX_COST`]; how it is estimated: [`cost`]).
    #[error(
        "spec.incidents.{field}: {expr:?} may cost up to {estimate} evaluation steps per delivery (limit {limit}) with spec.limits.maxBodyBytes {body_bytes}{per_alert}: a comprehension (map, filter, all, exists) over the body inside another one, or a function reading the whole body inside one, grows with the square of the body; iterate over the current element instead (e.g. `alert`, or the outer comprehension's variable), or lower spec.limits.maxBodyBytes{or_alerts}"
    )]
    TooCostly {
        field: &'static str,
        expr: String,
        estimate: u64,
        limit: u64,
        body_bytes: usize,
        per_alert: String,
        or_alerts: &'static str,
    },
    /// This delivery's evaluation ran past its run-time budget and was stopped.
    #[error("spec.incidents.{field}: evaluation over this payload exceeded its budget")]
    BudgetExceeded { field: &'static str },
}

impl MappingError {
    /// True for errors in the integration's spec (permanent until the spec changes: a
    /// condition, not a per-delivery answer); false for errors in one delivery (400).
    pub fn is_spec_error(&self) -> bool {
        matches!(
            self,
            MappingError::InvalidExpression { .. }
                | MappingError::InvalidPointer { .. }
                | MappingError::MissingIdFrom { .. }
                | MappingError::InvalidSeverityMap { .. }
                | MappingError::TooCostly { .. }
        )
    }
}

/// What [`Mapping::extract_bounded`] made of one delivery.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extracted {
    pub events: Vec<IncidentEvent>,
    /// Events past `max_events`, not mapped (counted on the status).
    pub dropped: usize,
}

/// How one integration's deliveries become incident events. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Mapping {
    preset: Preset,
    overrides: Overrides,
    severity_map: BTreeMap<String, Severity>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preset {
    Datadog,
    Alertmanager,
    Grafana,
    Pagerduty,
    Sentry,
    /// Amazon SNS carrying CloudWatch alarm state changes.
    CloudWatch,
    /// No preset: everything comes from the overrides (idFrom is required).
    None(ProviderKind),
}

#[derive(Clone, Debug, Default)]
struct Overrides {
    id: Option<Expr>,
    title: Option<Expr>,
    severity: Option<Expr>,
    link: Option<Expr>,
    time: Option<Expr>,
    resolved_when: Option<Expr>,
}

impl Overrides {
    fn uses_cel(&self) -> bool {
        [
            &self.id,
            &self.title,
            &self.severity,
            &self.link,
            &self.time,
            &self.resolved_when,
        ]
        .into_iter()
        .flatten()
        .any(|e| matches!(e.source, Source::Cel { .. }))
    }

    fn all(&self) -> impl Iterator<Item = &Expr> {
        [
            &self.id,
            &self.title,
            &self.severity,
            &self.link,
            &self.time,
            &self.resolved_when,
        ]
        .into_iter()
        .flatten()
    }
}

/// A compiled `…From` expression.
#[derive(Clone, Debug)]
struct Expr {
    field: &'static str,
    text: String,
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    Pointer,
    /// The program as written (what the cost estimate reads) and the copy that runs,
    /// with an interrupt check on every comprehension step ([`cost::instrument`]).
    Cel {
        program: Arc<Program>,
        run: Arc<IdedExpr>,
    },
}

/// The CEL environment every expression compiles and runs in: the standard library plus
/// the strings extension (`lowerAscii`, `split`, …), built once per process.
static CEL_ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // Registering a fixed extension on a fresh environment cannot conflict; should a
    // future version disagree, expressions still get the standard library.
    if env.add_extension(cel::extensions::strings).is_err() {
        return Arc::new(Env::stdlib());
    }
    Arc::new(env)
});

impl Expr {
    fn compile(field: &'static str, text: &str) -> Result<Expr, MappingError> {
        let text = text.trim();
        let source = if text.starts_with('/') {
            if !valid_pointer(text) {
                return Err(MappingError::InvalidPointer {
                    field,
                    expr: text.to_string(),
                });
            }
            Source::Pointer
        } else {
            let program = CEL_ENV
                .compile(text)
                .map_err(|e| MappingError::InvalidExpression {
                    field,
                    expr: text.to_string(),
                    message: e.to_string(),
                })?;
            let run = Arc::new(cost::instrument(program.expression()));
            Source::Cel {
                program: Arc::new(program),
                run,
            }
        };
        Ok(Expr {
            field,
            text: text.to_string(),
            source,
        })
    }

    /// For fields that only decorate an incident (title, severity, link, time): an
    /// expression that fails on one payload (e.g. a field of the wrong type) leaves the
    /// default in place rather than refusing the delivery; the incident still opens, and
    /// its title or severity shows the spec needs a look. The id and `resolvedWhen`
    /// decide which incident changes how, so their failures refuse the delivery.
    /// An interrupted evaluation is not a display failure: it stops the delivery.
    fn eval_display(&self, scope: &Scope<'_, '_>) -> Result<Option<Value>, MappingError> {
        match self.eval(scope) {
            Err(e @ MappingError::BudgetExceeded { .. }) => Err(e),
            other => Ok(other.ok().flatten()),
        }
    }

    /// The value the expression selects; `None` when it selects nothing (missing key,
    /// null).
    fn eval(&self, scope: &Scope<'_, '_>) -> Result<Option<Value>, MappingError> {
        match &self.source {
            Source::Pointer => Ok(crate::domain::json::pointer(scope.alert, &self.text)
                .filter(|v| !v.is_null())
                .cloned()),
            Source::Cel { run, .. } => {
                let Some(context) = scope.cel else {
                    return Err(MappingError::Evaluation {
                        field: self.field,
                        message: "CEL context missing".into(),
                    });
                };
                match context.resolve(run) {
                    Ok(value) => {
                        let json = value.json().map_err(|e| MappingError::Evaluation {
                            field: self.field,
                            message: e.to_string(),
                        })?;
                        Ok(Some(json).filter(|v| !v.is_null()))
                    }
                    Err(ExecutionError::NoSuchKey(_)) => Ok(None),
                    Err(ExecutionError::FunctionError { function, .. })
                        if function == cost::TICK =>
                    {
                        Err(MappingError::BudgetExceeded { field: self.field })
                    }
                    Err(e) => Err(MappingError::Evaluation {
                        field: self.field,
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
}

/// RFC 6901: `~` only as `~0` or `~1`.
fn valid_pointer(pointer: &str) -> bool {
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// What expressions see while one alert of a delivery is mapped.
struct Scope<'a, 'c> {
    alert: &'a Value,
    cel: Option<&'c Context<'c, 'c>>,
}

/// One alert as a preset reads it, before overrides and normalisation.
#[derive(Default)]
struct Draft<'a> {
    alert: Option<&'a Value>,
    id: Option<String>,
    /// Where the preset took the id from, for error messages.
    id_from: &'static str,
    title: Option<String>,
    /// Raw severities in order of preference.
    severities: Vec<String>,
    /// Already normalised severity, used when no raw one is recognised.
    severity_fallback: Option<Severity>,
    link: Option<String>,
    resolve: bool,
    time_ms: Option<i64>,
}

impl Mapping {
    /// Preset for monitoring providers (datadog, alertmanager, grafana, pagerduty, sentry)
    /// merged with spec.incidents overrides; generic/other providers map only when
    /// spec.incidents is set (else None = deliveries make no incidents).
    ///
    /// `spec.incidents` with only `keepRecent`/`maxTracked` does not count as set. For a provider
    /// without preset, `idFrom` is then required.
    pub fn for_spec(spec: &WebhookIntegrationSpec) -> Result<Option<Mapping>, MappingError> {
        let preset = match spec.provider {
            ProviderKind::Datadog => Preset::Datadog,
            ProviderKind::Alertmanager => Preset::Alertmanager,
            ProviderKind::Grafana => Preset::Grafana,
            ProviderKind::Pagerduty => Preset::Pagerduty,
            ProviderKind::Sentry => Preset::Sentry,
            ProviderKind::AwsSns => Preset::CloudWatch,
            other => Preset::None(other),
        };
        let empty = IncidentMapping::default();
        let spec_mapping = spec.incidents.as_deref().unwrap_or(&empty);
        let configured = IncidentMapping {
            keep_recent: None,
            max_tracked: None,
            ..spec_mapping.clone()
        } != empty;
        if let Preset::None(provider) = preset {
            if !configured {
                return Ok(None);
            }
            if spec_mapping.id_from.is_none() {
                return Err(MappingError::MissingIdFrom {
                    provider: provider.as_str(),
                });
            }
        }
        let compile = |field: &'static str, text: &Option<String>| {
            text.as_deref().map(|t| Expr::compile(field, t)).transpose()
        };
        let overrides = Overrides {
            id: compile("idFrom", &spec_mapping.id_from)?,
            title: compile("titleFrom", &spec_mapping.title_from)?,
            severity: compile("severityFrom", &spec_mapping.severity_from)?,
            link: compile("linkFrom", &spec_mapping.link_from)?,
            time: compile("timeFrom", &spec_mapping.time_from)?,
            resolved_when: match spec_mapping.resolved_when.as_deref() {
                Some(text) if text.trim().starts_with('/') => {
                    // A pointer cannot be a condition; say so instead of reading it as CEL.
                    return Err(MappingError::InvalidExpression {
                        field: "resolvedWhen",
                        expr: text.to_string(),
                        message: "resolvedWhen is a CEL condition (e.g. body.status == \"resolved\"), not a JSON pointer".into(),
                    });
                }
                Some(text) => Some(Expr::compile("resolvedWhen", text)?),
                None => None,
            },
        };
        let mut severity_map = BTreeMap::new();
        for (key, value) in &spec_mapping.severity_map {
            let severity =
                Severity::from_name(value).ok_or_else(|| MappingError::InvalidSeverityMap {
                    key: key.clone(),
                    value: value.clone(),
                })?;
            severity_map.insert(key.clone(), severity);
        }
        Ok(Some(Mapping {
            preset,
            overrides,
            severity_map,
        }))
    }

    /// Events carried by one authenticated delivery body. `event_type` is the provider
    /// event type when known (e.g. Sentry-Hook-Resource header, PagerDuty
    /// event.event_type). `received_at_ms` is used when the payload has no event time.
    ///
    /// An empty list means the delivery is valid but says nothing about incidents (e.g. a
    /// Sentry `installation` hook, a PagerDuty `incident.annotated`).
    pub fn extract(
        &self,
        body: &Value,
        event_type: Option<&str>,
        received_at_ms: i64,
    ) -> Result<Vec<IncidentEvent>, MappingError> {
        self.extract_bounded(
            body,
            event_type,
            received_at_ms,
            usize::MAX,
            &Interrupt::new(),
        )
        .map(|e| e.events)
    }

    /// Whether any expression is CEL (so the mapping is worth running off the async
    /// workers: [`Mapping::extract_bounded`] with an [`Interrupt`]).
    pub fn uses_cel(&self) -> bool {
        self.overrides.uses_cel()
    }

    /// The admission check of CEL cost: every expression whose worst case over a body
    /// of `max_body_bytes`, mapped into at most `max_alerts` events, is above
    /// [`cost::MAX_COST`].
    pub fn check_cost(&self, max_body_bytes: usize, max_alerts: usize) -> Vec<MappingError> {
        let per_alert = matches!(self.preset, Preset::Alertmanager | Preset::Grafana);
        let bounds = Bounds {
            body_bytes: max_body_bytes,
            evaluations: if per_alert {
                // Each alert is at least `{}` and a comma.
                max_alerts.min(max_body_bytes / 3).max(1)
            } else {
                1
            },
        };
        self.overrides
            .all()
            .filter_map(|expr| {
                let Source::Cel { program, .. } = &expr.source else {
                    return None;
                };
                let estimate = cost::estimate(program.expression(), &bounds);
                (estimate > cost::MAX_COST).then(|| MappingError::TooCostly {
                    field: expr.field,
                    expr: expr.text.clone(),
                    // Saturating: "up to 1.8e19" says enough.
                    estimate: estimate as u64,
                    limit: cost::MAX_COST as u64,
                    body_bytes: max_body_bytes,
                    per_alert: if per_alert {
                        format!(
                            ", evaluated for each of up to {} alerts",
                            bounds.evaluations
                        )
                    } else {
                        String::new()
                    },
                    or_alerts: if per_alert {
                        " or spec.incidents.maxAlertsPerDelivery"
                    } else {
                        ""
                    },
                })
            })
            .collect()
    }

    /// [`Mapping::extract`] mapping at most `max_events` events (the rest of a
    /// multi-alert delivery only counted in [`Extracted::dropped`], never evaluated),
    /// stopped at the next comprehension step once `interrupt` is raised
    /// ([`MappingError::BudgetExceeded`]).
    pub fn extract_bounded(
        &self,
        body: &Value,
        event_type: Option<&str>,
        received_at_ms: i64,
        max_events: usize,
        interrupt: &Interrupt,
    ) -> Result<Extracted, MappingError> {
        let mut drafts = match self.preset {
            Preset::Datadog => vec![datadog(|name| body.get(name).map(Scalar::of))],
            Preset::Alertmanager => alerts(body, "alertmanager", false)?,
            Preset::Grafana => alerts(body, "grafana", true)?,
            Preset::Pagerduty => pagerduty(body, event_type)?,
            Preset::Sentry => sentry(body, event_type)?,
            Preset::CloudWatch => cloudwatch(body),
            Preset::None(_) => vec![Draft {
                id_from: "idFrom",
                ..Draft::default()
            }],
        };
        let dropped = drafts.len().saturating_sub(max_events);
        drafts.truncate(max_events);
        if drafts.is_empty() {
            return Ok(Extracted {
                events: Vec::new(),
                dropped,
            });
        }
        let root = if self.overrides.uses_cel() {
            let mut context = Context::with_env(CEL_ENV.clone());
            // The name is not a standard function, so registering it cannot conflict.
            context
                .add_function(cost::TICK, interrupt.tick_function())
                .map_err(|e| MappingError::Evaluation {
                    field: "body",
                    message: e.to_string(),
                })?;
            context
                .add_variable("body", body)
                .map_err(|e| MappingError::Evaluation {
                    field: "body",
                    message: e.to_string(),
                })?;
            context.add_variable("eventType", event_type).map_err(|e| {
                MappingError::Evaluation {
                    field: "eventType",
                    message: e.to_string(),
                }
            })?;
            Some(context)
        } else {
            None
        };
        drafts
            .into_iter()
            .map(|draft| {
                let alert = draft.alert.unwrap_or(body);
                match &root {
                    Some(root) => {
                        let mut inner = root.new_inner_scope();
                        inner.add_variable("alert", alert).map_err(|e| {
                            MappingError::Evaluation {
                                field: "alert",
                                message: e.to_string(),
                            }
                        })?;
                        self.finish(
                            draft,
                            &Scope {
                                alert,
                                cel: Some(&inner),
                            },
                            received_at_ms,
                        )
                    }
                    None => self.finish(draft, &Scope { alert, cel: None }, received_at_ms),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|events| Extracted { events, dropped })
    }

    /// This mapping as one that reads only a body's top-level fields, when it is one: the
    /// Datadog preset with no `…From` override (`severityMap` reads no body). A delivery
    /// for it can be read with [`TopLevel`] instead of being parsed into a tree.
    pub fn top_level(&self) -> Option<TopLevelMapping<'_>> {
        (self.preset == Preset::Datadog && self.overrides.all().next().is_none())
            .then_some(TopLevelMapping { mapping: self })
    }

    /// Applies the overrides to one preset draft and normalises it into an event.
    fn finish(
        &self,
        mut draft: Draft<'_>,
        scope: &Scope<'_, '_>,
        received_at_ms: i64,
    ) -> Result<IncidentEvent, MappingError> {
        let o = &self.overrides;
        // Only an error names it: formatted then.
        let id_from = || match &o.id {
            Some(expr) => format!("idFrom {:?}", expr.text),
            None => draft.id_from.to_string(),
        };
        if let Some(expr) = &o.id {
            draft.id = expr.eval(scope)?.as_ref().and_then(scalar_text);
        }
        if let Some(expr) = &o.title
            && let Some(title) = expr.eval_display(scope)?.as_ref().and_then(scalar_text)
        {
            draft.title = Some(title);
        }
        if let Some(expr) = &o.severity {
            draft.severities = expr
                .eval_display(scope)?
                .as_ref()
                .and_then(scalar_text)
                .into_iter()
                .collect();
            draft.severity_fallback = None;
        }
        if let Some(expr) = &o.link
            && let Some(link) = expr.eval_display(scope)?.as_ref().and_then(scalar_text)
        {
            draft.link = Some(link);
        }
        if let Some(expr) = &o.time
            && let Some(time) = expr.eval_display(scope)?.as_ref().and_then(time_ms)
        {
            draft.time_ms = Some(time);
        }
        if let Some(expr) = &o.resolved_when {
            draft.resolve = match expr.eval(scope)? {
                None => false,
                Some(Value::Bool(b)) => b,
                Some(other) => {
                    return Err(MappingError::NotBool {
                        got: json_type(&other).to_string(),
                    });
                }
            };
        }

        let Some(id) = draft.id else {
            return Err(MappingError::MissingId { from: id_from() });
        };
        if id.len() > MAX_ID_BYTES {
            return Err(MappingError::IdTooLong { from: id_from() });
        }
        let severity = draft
            .severities
            .iter()
            .find_map(|raw| self.severity(raw))
            .or(draft.severity_fallback)
            .unwrap_or(Severity::Info);
        let title = match draft.title {
            Some(title) => truncated(title, MAX_TITLE_CHARS),
            None => truncated(id.clone(), MAX_TITLE_CHARS),
        };
        let link = draft.link.filter(|l| usable_link(l));
        Ok(IncidentEvent {
            id,
            title,
            severity,
            link,
            resolve: draft.resolve,
            event_time_ms: draft.time_ms.unwrap_or(received_at_ms),
        })
    }

    fn severity(&self, raw: &str) -> Option<Severity> {
        let mapped = self.severity_map.get(raw).copied().or_else(|| {
            let trimmed = raw.trim();
            self.severity_map
                .iter()
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(trimmed))
                .map(|(_, s)| *s)
        });
        mapped.or_else(|| Severity::normalise(raw))
    }
}

/// A [`Mapping`] that reads only top-level fields ([`Mapping::top_level`]).
#[derive(Clone, Copy, Debug)]
pub struct TopLevelMapping<'m> {
    mapping: &'m Mapping,
}

impl TopLevelMapping<'_> {
    /// The fields it reads, to read a body with ([`TopLevel::parse`]); they include those
    /// the delivery id and event type are taken from.
    pub fn fields(&self) -> &'static [&'static str] {
        DATADOG_FIELDS
    }

    /// [`Mapping::extract_bounded`] of a body read with [`TopLevelMapping::fields`]: the
    /// same events for the same body. No CEL runs, so there is nothing to interrupt.
    pub fn extract(
        &self,
        body: &TopLevel<'_>,
        received_at_ms: i64,
        max_events: usize,
    ) -> Result<Extracted, MappingError> {
        let draft = datadog(|name| body.get(name).map(Scalar::borrowed));
        if max_events == 0 {
            return Ok(Extracted {
                events: Vec::new(),
                dropped: 1,
            });
        }
        // No override reads the scope (`Mapping::top_level`).
        let scope = Scope {
            alert: &Value::Null,
            cel: None,
        };
        let event = self.mapping.finish(draft, &scope, received_at_ms)?;
        Ok(Extracted {
            events: vec![event],
            dropped: 0,
        })
    }
}

// ----- presets ---------------------------------------------------------------------------

/// The Datadog preset reads these top-level fields, and the delivery id and event type
/// ([`crate::domain::signature::delivery_meta`]) these too: `id`, `alert_transition`,
/// `date`, `last_updated`, `event_type`. A body read with [`TopLevel`] keeps only these.
pub const DATADOG_FIELDS: &[&str] = &[
    "id",
    "aggreg_key",
    "alert_name",
    "title",
    "alert_type",
    "alert_transition",
    "severity",
    "link",
    "date",
    "last_updated",
    "event_type",
];

/// The Datadog preset, over a body's top-level fields (a flat template: see
/// [`DATADOG_TEMPLATE`]).
fn datadog<'a>(field: impl Fn(&str) -> Option<Scalar<'a>>) -> Draft<'static> {
    // Borrowed from the body until the draft keeps it.
    let text = |name: &str| field(name).and_then(scalar_text_cow);
    let transition = text("alert_transition");
    let alert_type = text("alert_type");
    let resolve = match transition.as_deref() {
        Some(t) => t.eq_ignore_ascii_case("recovered"),
        None => alert_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("success")),
    };
    let (id, id_from) = match text("aggreg_key") {
        Some(key) => (Some(key.into_owned()), "aggreg_key"),
        None => (text("id").map(Cow::into_owned), "aggreg_key or id"),
    };
    let title = text("alert_name")
        .or_else(|| text("title"))
        .map(|t| strip_datadog_tags(&t).to_string());
    let time = |name: &str| field(name).as_ref().and_then(scalar_time_ms);
    Draft {
        id,
        id_from,
        title,
        severities: text("severity")
            .into_iter()
            .chain(alert_type)
            .map(Cow::into_owned)
            .collect(),
        link: text("link").map(Cow::into_owned),
        resolve,
        time_ms: time("date").or_else(|| time("last_updated")),
        ..Draft::default()
    }
}

/// Datadog prefixes titles with tags such as `[Triggered on {host:web-1}]`, `[P1]` or
/// `[Recovered]`; they change with every transition, so they are not part of the title.
fn strip_datadog_tags(title: &str) -> &str {
    const TAGS: [&str; 12] = [
        "triggered",
        "re-triggered",
        "recovered",
        "warn",
        "re-warn",
        "no data",
        "re-no data",
        "renotify",
        "p1",
        "p2",
        "p3",
        "p4",
    ];
    let mut rest = title.trim_start();
    while let Some(after) = rest.strip_prefix('[') {
        let Some(end) = after.find(']') else { break };
        let tag = after[..end].trim().to_ascii_lowercase();
        if !(TAGS.iter().any(|t| tag.starts_with(t)) || tag == "p5") {
            break;
        }
        rest = after[end + 1..].trim_start();
    }
    if rest.is_empty() { title.trim() } else { rest }
}

/// Alertmanager webhook v4 and Grafana unified alerting: one event per alert, keyed by
/// fingerprint.
fn alerts<'a>(
    body: &'a Value,
    provider: &'static str,
    grafana: bool,
) -> Result<Vec<Draft<'a>>, MappingError> {
    let alerts = body
        .get("alerts")
        .and_then(Value::as_array)
        .ok_or(MappingError::Malformed {
            provider,
            reason: "no alerts array",
        })?;
    Ok(alerts
        .iter()
        .map(|alert| {
            let resolve =
                text(alert, "/status").is_some_and(|s| s.eq_ignore_ascii_case("resolved"));
            let time = if resolve { "/endsAt" } else { "/startsAt" };
            let mut link = text(alert, "/generatorURL");
            if grafana {
                link = link
                    .or_else(|| text(alert, "/panelURL"))
                    .or_else(|| text(alert, "/dashboardURL"));
            }
            Draft {
                alert: Some(alert),
                id: text(alert, "/fingerprint"),
                id_from: "alerts[].fingerprint",
                title: text(alert, "/annotations/summary")
                    .or_else(|| text(alert, "/labels/alertname"))
                    .or_else(|| text(body, "/commonLabels/alertname")),
                severities: text(alert, "/labels/severity")
                    .into_iter()
                    .chain(text(alert, "/labels/priority"))
                    .collect(),
                link,
                resolve,
                time_ms: crate::domain::json::pointer(alert, time).and_then(time_ms),
                ..Draft::default()
            }
        })
        .collect())
}

/// PagerDuty v3 event types that say something about an incident's lifecycle. Others
/// (annotations, status updates, custom fields, service events) carry no incident state
/// and must not re-open a resolved incident.
const PAGERDUTY_LIFECYCLE: [&str; 9] = [
    "incident.triggered",
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.escalated",
    "incident.reassigned",
    "incident.delegated",
    "incident.priority_updated",
    "incident.reopened",
    "incident.resolved",
];

fn pagerduty<'a>(
    body: &'a Value,
    event_type: Option<&str>,
) -> Result<Vec<Draft<'a>>, MappingError> {
    let event = body
        .get("event")
        .filter(|e| e.is_object())
        .ok_or(MappingError::Malformed {
            provider: "pagerduty",
            reason: "no event object (only v3 webhooks are supported)",
        })?;
    let kind = text(event, "/event_type")
        .or_else(|| event_type.map(str::to_string))
        .unwrap_or_default();
    if !PAGERDUTY_LIFECYCLE.contains(&kind.as_str()) {
        return Ok(Vec::new());
    }
    let Some(data) = event.get("data").filter(|d| d.is_object()) else {
        return Err(MappingError::Malformed {
            provider: "pagerduty",
            reason: "event has no data object",
        });
    };
    if text(data, "/type").is_some_and(|t| t != "incident") {
        return Ok(Vec::new());
    }
    Ok(vec![Draft {
        alert: Some(body),
        id: text(data, "/id"),
        id_from: "event.data.id",
        title: text(data, "/title").or_else(|| text(data, "/summary")),
        severities: text(data, "/priority/summary")
            .into_iter()
            .chain(text(data, "/urgency"))
            .collect(),
        link: text(data, "/html_url"),
        resolve: kind == "incident.resolved",
        time_ms: crate::domain::json::pointer(event, "/occurred_at").and_then(time_ms),
        ..Draft::default()
    }])
}

/// Sentry integration-platform hooks: `metric_alert` (critical/warning/resolved),
/// `event_alert` (issue alert rules, always triggered) and `issue`
/// (created/unresolved/resolved/archived). Issue alerts and issue hooks share the key
/// `issue:<id>`, so an issue resolved in Sentry resolves the incident its alert opened.
fn sentry<'a>(body: &'a Value, event_type: Option<&str>) -> Result<Vec<Draft<'a>>, MappingError> {
    let data = body.get("data").filter(|d| d.is_object());
    let resource = event_type.map(str::to_string).or_else(|| {
        let data = data?;
        ["metric_alert", "event", "issue"]
            .into_iter()
            .find(|k| data.get(*k).is_some())
            .map(|k| {
                if k == "event" {
                    "event_alert".to_string()
                } else {
                    k.to_string()
                }
            })
    });
    let action = text(body, "/action")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let Some(resource) = resource else {
        return Ok(Vec::new());
    };
    let malformed = |reason| MappingError::Malformed {
        provider: "sentry",
        reason,
    };
    let draft = match resource.as_str() {
        "metric_alert" => {
            let alert = crate::domain::json::pointer(body, "/data/metric_alert")
                .ok_or(malformed("metric_alert hook without data.metric_alert"))?;
            let resolve = action == "resolved";
            let severity_fallback = match action.as_str() {
                "critical" => Some(Severity::Critical),
                "warning" => Some(Severity::Medium),
                // A recovery does not say how bad it was; the rule's worst trigger does.
                _ => worst_trigger(alert),
            };
            Draft {
                id: text(alert, "/id").map(|id| format!("metric_alert:{id}")),
                id_from: "data.metric_alert.id",
                title: text(alert, "/alert_rule/name")
                    .or_else(|| text(body, "/data/description_title"))
                    .or_else(|| text(alert, "/title")),
                severity_fallback,
                link: text(body, "/data/web_url"),
                resolve,
                ..Draft::default()
            }
        }
        "event_alert" => {
            let event = crate::domain::json::pointer(body, "/data/event")
                .ok_or(malformed("event_alert hook without data.event"))?;
            Draft {
                id: text(event, "/issue_id").map(|id| format!("issue:{id}")),
                id_from: "data.event.issue_id",
                title: text(event, "/title").or_else(|| text(body, "/data/triggered_rule")),
                severities: text(event, "/level").into_iter().collect(),
                link: text(event, "/web_url"),
                resolve: false,
                ..Draft::default()
            }
        }
        "issue" => {
            let resolve = match action.as_str() {
                "created" | "unresolved" => false,
                "resolved" | "archived" | "ignored" => true,
                _ => return Ok(Vec::new()),
            };
            let issue = crate::domain::json::pointer(body, "/data/issue")
                .ok_or(malformed("issue hook without data.issue"))?;
            Draft {
                id: text(issue, "/id").map(|id| format!("issue:{id}")),
                id_from: "data.issue.id",
                title: text(issue, "/title"),
                severities: text(issue, "/level").into_iter().collect(),
                link: text(issue, "/web_url").or_else(|| text(issue, "/permalink")),
                resolve,
                ..Draft::default()
            }
        }
        _ => return Ok(Vec::new()),
    };
    Ok(vec![Draft {
        alert: Some(body),
        ..draft
    }])
}

/// A CloudWatch alarm state change as SNS delivers it: the receiver has replaced the
/// `Message` text by its JSON. `ALARM` opens, `OK` resolves; `INSUFFICIENT_DATA` and
/// messages that are not alarms (other SNS publishers) make no incident.
fn cloudwatch(body: &Value) -> Vec<Draft<'_>> {
    if body.get("Type").and_then(Value::as_str) != Some("Notification") {
        return Vec::new();
    }
    let Some(alarm) = body.get("Message").filter(|m| m.get("AlarmName").is_some()) else {
        return Vec::new();
    };
    let resolve = match text(alarm, "/NewStateValue").as_deref() {
        Some("ALARM") => false,
        Some("OK") => true,
        _ => return Vec::new(),
    };
    let arn = text(alarm, "/AlarmArn");
    // arn:aws:cloudwatch:<region>:<account>:alarm:<name>
    let link = arn.as_deref().and_then(|arn| {
        let region = arn.split(':').nth(3).filter(|r| !r.is_empty())?;
        let name = text(alarm, "/AlarmName")?;
        let encoded: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
        Some(format!(
            "https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#alarmsV2:alarm/{encoded}"
        ))
    });
    // CloudWatch writes StateChangeTime as 2026-12-07T08:00:00.000+0000 (no colon in
    // the offset, which RFC 3339 requires).
    let time_ms = text(alarm, "/StateChangeTime").and_then(|t| {
        let fixed = match t.strip_suffix("+0000") {
            Some(head) => format!("{head}Z"),
            None => t,
        };
        fixed
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|ts| ts.as_millisecond())
    });
    vec![Draft {
        alert: Some(alarm),
        id: arn.or_else(|| text(alarm, "/AlarmName")),
        id_from: "Message.AlarmArn",
        title: text(alarm, "/AlarmName").map(|name| match text(alarm, "/AlarmDescription") {
            Some(d) => format!("{name}: {d}"),
            None => name,
        }),
        severity_fallback: Some(Severity::High),
        link,
        resolve,
        time_ms,
        ..Draft::default()
    }]
}

fn worst_trigger(alert: &Value) -> Option<Severity> {
    crate::domain::json::pointer(alert, "/alert_rule/triggers")?
        .as_array()?
        .iter()
        .filter_map(|t| text(t, "/label"))
        .filter_map(|label| Severity::normalise(&label))
        .min()
}

// ----- value helpers ---------------------------------------------------------------------

/// A non-empty string or a number at `pointer`, as text.
fn text(value: &Value, pointer: &str) -> Option<String> {
    crate::domain::json::pointer(value, pointer).and_then(scalar_text)
}

fn scalar_text(value: &Value) -> Option<String> {
    scalar_text_cow(Scalar::of(value)).map(Cow::into_owned)
}

/// [`scalar_text`], borrowed where the value's text is.
fn scalar_text_cow(value: Scalar<'_>) -> Option<Cow<'_, str>> {
    match value {
        Scalar::Str(Cow::Borrowed(s)) => Some(Cow::Borrowed(s.trim())).filter(|s| !s.is_empty()),
        Scalar::Str(Cow::Owned(s)) => Some(s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| Cow::Owned(s.to_string())),
        Scalar::Num(n) => Some(Cow::Owned(n.to_string())),
        Scalar::Bool(b) => Some(Cow::Owned(b.to_string())),
        Scalar::Null | Scalar::Composite => None,
    }
}

fn time_ms(value: &Value) -> Option<i64> {
    scalar_time_ms(&Scalar::of(value))
}

/// RFC 3339 text, or Unix seconds / milliseconds (as a number or numeric text). Times
/// at or before 1970 count as absent: Alertmanager writes `0001-01-01T00:00:00Z` for
/// "not ended".
fn scalar_time_ms(value: &Scalar<'_>) -> Option<i64> {
    let ms = match value {
        Scalar::Num(n) => unix_number_ms(n.as_f64()?),
        Scalar::Str(s) => {
            let s = s.trim();
            match s.parse::<jiff::Timestamp>() {
                Ok(ts) => Some(ts.as_millisecond()),
                Err(_) => s.parse::<f64>().ok().and_then(unix_number_ms),
            }
        }
        _ => None,
    }?;
    Some(ms).filter(|&ms| ms > 0)
}

/// Numbers from 10^11 on are milliseconds (10^11 seconds is the year 5138).
fn unix_number_ms(n: f64) -> Option<i64> {
    if !n.is_finite() {
        return None;
    }
    let ms = if n.abs() >= 1e11 { n } else { n * 1000.0 };
    // Saturating float→int conversion; absurd values are rejected by the range check.
    let ms = ms.round() as i64;
    (ms > 0 && ms < 253_402_300_800_000).then_some(ms)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

/// `s` cut to at most `max` characters.
fn truncated(mut s: String, max: usize) -> String {
    // Only text longer than `max` bytes can have more than `max` characters.
    if s.len() > max
        && let Some((cut, _)) = s.char_indices().nth(max)
    {
        s.truncate(cut);
    }
    s
}

/// Only web links reach the status: a `javascript:` or file link there would be a trap
/// for any UI that renders it.
fn usable_link(link: &str) -> bool {
    link.len() <= MAX_LINK_BYTES && (link.starts_with("https://") || link.starts_with("http://"))
}

#[cfg(test)]
mod tests;
