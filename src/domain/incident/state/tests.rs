use proptest::prelude::*;

use super::*;

const S: i64 = 1_700_000_000_000;

fn trigger(id: &str, at_s: i64, title: &str) -> IncidentEvent {
    IncidentEvent {
        id: id.to_string(),
        title: title.to_string(),
        severity: Severity::High,
        link: Some(format!("https://example.com/{id}")),
        resolve: false,
        event_time_ms: S + at_s * 1000,
    }
}

fn recovery(id: &str, at_s: i64) -> IncidentEvent {
    IncidentEvent {
        resolve: true,
        title: "recovered".to_string(),
        ..trigger(id, at_s, "")
    }
}

fn ms(at_s: i64) -> i64 {
    S + at_s * 1000
}

/// One row: events applied in order (event, tiebreak) with the transition each must
/// produce, then what the incident `a` must look like.
struct Case {
    name: &'static str,
    steps: Vec<(IncidentEvent, &'static str, Transition)>,
    state: Option<IncidentState>,
    title: &'static str,
    opened_at: Option<i64>,
    resolved_at: Option<i64>,
    open: usize,
}

#[test]
fn state_machine_table() {
    use Transition::*;
    let cases = vec![
        Case {
            name: "trigger opens",
            steps: vec![(trigger("a", 1, "disk full"), "d1", Opened)],
            state: Some(IncidentState::Open),
            title: "disk full",
            opened_at: Some(ms(1)),
            resolved_at: None,
            open: 1,
        },
        Case {
            name: "newer trigger updates, keeps openedAt",
            steps: vec![
                (trigger("a", 1, "disk 90%"), "d1", Opened),
                (trigger("a", 2, "disk 99%"), "d2", Updated),
            ],
            state: Some(IncidentState::Open),
            title: "disk 99%",
            opened_at: Some(ms(1)),
            resolved_at: None,
            open: 1,
        },
        Case {
            name: "recovery resolves",
            steps: vec![
                (trigger("a", 1, "disk full"), "d1", Opened),
                (recovery("a", 3), "d2", Resolved),
            ],
            state: Some(IncidentState::Resolved),
            title: "recovered",
            opened_at: Some(ms(1)),
            resolved_at: Some(ms(3)),
            open: 0,
        },
        Case {
            name: "newer trigger re-opens a resolved incident",
            steps: vec![
                (trigger("a", 1, "disk full"), "d1", Opened),
                (recovery("a", 3), "d2", Resolved),
                (trigger("a", 5, "disk full again"), "d3", Reopened),
            ],
            state: Some(IncidentState::Open),
            title: "disk full again",
            opened_at: Some(ms(5)),
            resolved_at: None,
            open: 1,
        },
        Case {
            name: "older trigger never re-opens",
            steps: vec![
                (trigger("a", 1, "disk full"), "d1", Opened),
                (recovery("a", 5), "d2", Resolved),
                (trigger("a", 3, "late retry"), "d3", Unchanged),
            ],
            state: Some(IncidentState::Resolved),
            title: "recovered",
            opened_at: Some(ms(1)),
            resolved_at: Some(ms(5)),
            open: 0,
        },
        Case {
            name: "older recovery never resolves a newer trigger, but splits the episode",
            steps: vec![
                (trigger("a", 1, "first"), "d1", Opened),
                (trigger("a", 5, "second"), "d2", Updated),
                (recovery("a", 3), "d3", Unchanged),
            ],
            state: Some(IncidentState::Open),
            title: "second",
            opened_at: Some(ms(5)),
            resolved_at: None,
            open: 1,
        },
        Case {
            name: "same event twice is a no-op",
            steps: vec![
                (trigger("a", 1, "x"), "d1", Opened),
                (trigger("a", 1, "x"), "d1", Unchanged),
            ],
            state: Some(IncidentState::Open),
            title: "x",
            opened_at: Some(ms(1)),
            resolved_at: None,
            open: 1,
        },
        Case {
            name: "same time: the higher tiebreak wins, whatever the arrival order",
            steps: vec![
                (trigger("a", 1, "x"), "d2", Opened),
                (recovery("a", 1), "d1", Unchanged),
            ],
            state: Some(IncidentState::Open),
            title: "x",
            opened_at: Some(ms(1)),
            resolved_at: None,
            open: 1,
        },
        Case {
            name: "same time, other arrival order",
            steps: vec![
                (recovery("a", 1), "d1", Unchanged),
                (trigger("a", 1, "x"), "d2", Opened),
            ],
            state: Some(IncidentState::Open),
            title: "x",
            opened_at: Some(ms(1)),
            resolved_at: None,
            open: 1,
        },
        Case {
            name: "recovery of an unknown incident is remembered, not opened",
            steps: vec![
                (recovery("a", 5), "d1", Unchanged),
                (trigger("a", 3, "late"), "d2", Unchanged),
            ],
            state: Some(IncidentState::Resolved),
            title: "recovered",
            opened_at: Some(ms(3)),
            resolved_at: Some(ms(5)),
            open: 0,
        },
        Case {
            name: "newer trigger after a recovery-only incident opens it",
            steps: vec![
                (recovery("a", 1), "d1", Unchanged),
                (trigger("a", 3, "now"), "d2", Opened),
            ],
            state: Some(IncidentState::Open),
            title: "now",
            opened_at: Some(ms(3)),
            resolved_at: None,
            open: 1,
        },
        Case {
            name: "second recovery of a resolved incident changes no state",
            steps: vec![
                (trigger("a", 1, "x"), "d1", Opened),
                (recovery("a", 2), "d2", Resolved),
                (recovery("a", 4), "d3", Unchanged),
            ],
            state: Some(IncidentState::Resolved),
            title: "recovered",
            opened_at: Some(ms(1)),
            resolved_at: Some(ms(4)),
            open: 0,
        },
        Case {
            name: "other incidents are independent",
            steps: vec![
                (trigger("b", 1, "other"), "d1", Opened),
                (recovery("a", 2), "d2", Unchanged),
            ],
            state: Some(IncidentState::Resolved),
            title: "recovered",
            opened_at: None,
            resolved_at: Some(ms(2)),
            open: 1,
        },
    ];
    for case in cases {
        let mut book = IncidentBook::default();
        for (i, (ev, tiebreak, want)) in case.steps.iter().enumerate() {
            let revision = book.revision();
            let got = book.apply(ev, tiebreak);
            assert_eq!(got, *want, "{}: step {i}", case.name);
            if i > 0 && case.steps[i - 1].0 == *ev && case.steps[i - 1].1 == *tiebreak {
                assert_eq!(
                    book.revision(),
                    revision,
                    "{}: duplicate must not change the book",
                    case.name
                );
            }
        }
        let a = book.get("a");
        assert_eq!(a.map(|i| i.state), case.state, "{}", case.name);
        if let Some(a) = a {
            assert_eq!(a.title, case.title, "{}", case.name);
            assert_eq!(a.opened_at_ms, case.opened_at, "{}: openedAt", case.name);
            assert_eq!(
                a.resolved_at_ms, case.resolved_at,
                "{}: resolvedAt",
                case.name
            );
        }
        assert_eq!(book.open_count(), case.open, "{}: open count", case.name);
        assert_eq!(
            book.to_status(20).open,
            case.open as i64,
            "{}: status open",
            case.name
        );
    }
}

#[test]
fn status_lists_newest_first_and_counts_every_open_incident() {
    let mut book = IncidentBook::default();
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        book.apply(&trigger(id, i as i64, id), "d");
    }
    book.apply(&recovery("a", 10), "d");
    let status = book.to_status(2);
    let recent: Vec<&str> = status.recent.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(recent, ["a", "d"]);
    assert_eq!(status.recent[0].state, "resolved");
    assert_eq!(status.recent[1].state, "open");
    // b and c are open but not recent: still counted, still carried for other replicas.
    assert_eq!(status.open, 3);
    let tracked: Vec<&str> = status.tracked.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(tracked, ["c", "b"]);
}

#[test]
fn summary_round_trips_through_status_yaml() {
    let mut book = IncidentBook::default();
    book.apply(&trigger("a", 1, "x"), "d1");
    book.apply(&recovery("a", 2), "d2");
    book.apply(&trigger("a", 4, "y"), "d:3");
    let status = book.to_status(5);
    let yaml = serde_yaml::to_string(&status).expect("serialise");
    assert!(yaml.contains("order: 1700000004000:d:3"), "{yaml}");
    assert!(
        yaml.contains("previousResolvedAt: 2023-11-14T22:13:22Z"),
        "{yaml}"
    );
    let back: IncidentsStatus = serde_yaml::from_str(&yaml).expect("parse");
    let mut copy = IncidentBook::default();
    copy.merge(&back);
    assert_eq!(copy.get("a"), book.get("a"));
    assert_eq!(copy.to_status(5), status);
}

#[test]
fn summaries_without_order_still_merge() {
    let hand_written: IncidentsStatus = serde_yaml::from_str(
        "open: 1\nrecent:\n- id: a\n  title: old\n  severity: P1\n  state: open\n  updatedAt: 2023-11-14T22:13:21Z\n- id: b\n  state: weird\n  updatedAt: 2023-11-14T22:13:21Z\n",
    )
    .expect("parse");
    let mut book = IncidentBook::default();
    book.merge(&hand_written);
    assert_eq!(book.len(), 1, "entries in an unknown state are skipped");
    let a = book.get("a").expect("a");
    assert_eq!(a.severity, Severity::Critical);
    // Any event of the same second with a tiebreak is newer than the hand-written entry.
    assert_eq!(book.apply(&recovery("a", 1), "d1"), Transition::Resolved);
}

#[test]
fn capacity_drops_oldest_resolved_first() {
    let mut book = IncidentBook::new(3);
    book.apply(&trigger("old-resolved", 1, "x"), "d");
    book.apply(&recovery("old-resolved", 2), "d");
    book.apply(&trigger("open-1", 0, "x"), "d");
    book.apply(&trigger("open-2", 3, "x"), "d");
    book.apply(&trigger("open-3", 4, "x"), "d");
    assert_eq!(book.len(), 3);
    assert!(book.get("old-resolved").is_none());
    assert_eq!(book.open_count(), 3);
    assert!(
        !book.truncated(),
        "a dropped resolved incident leaves the count exact"
    );
    // Only open incidents left: the oldest open one goes from the lists, not from the
    // count (issue 18, finding 9: it was a silent undercount).
    book.apply(&trigger("open-4", 5, "x"), "d");
    assert!(book.get("open-1").is_none());
    assert_eq!((book.open_count(), book.tracked_open_count()), (4, 3));
    assert!(book.truncated());
    let status = book.to_status(20);
    assert_eq!(
        (
            status.open,
            status.truncated,
            status.open_display.as_deref()
        ),
        (4, true, Some("4+"))
    );
}

/// Issue 18, finding 9: 811 distinct open alerts over a cap of 100 count 811, flagged.
#[test]
fn open_stays_exact_past_the_cap_and_later_events_for_dropped_incidents_count() {
    let mut book = IncidentBook::new(100);
    for i in 0..811 {
        book.apply(&trigger(&format!("alert-{i}"), i, "x"), &format!("d{i}"));
    }
    assert_eq!(book.len(), 100);
    assert_eq!(book.open_count(), 811);
    assert_eq!(book.to_status(20).open_display.as_deref(), Some("811+"));
    // A recovery of a dropped incident resolves it (and is news); a repeated trigger
    // of one is not a new incident.
    assert_eq!(
        book.apply(&recovery("alert-0", 2000), "r0"),
        Transition::Resolved
    );
    assert_eq!(book.open_count(), 810);
    assert_eq!(
        book.apply(&trigger("alert-1", 2001, "again"), "t1"),
        Transition::Updated
    );
    assert_eq!(book.open_count(), 810, "re-tracked, counted once");
    // Resolving everything clears the flag: the lists show every open incident again.
    for i in 0..811 {
        book.apply(&recovery(&format!("alert-{i}"), 3000 + i), &format!("r{i}"));
    }
    assert_eq!(book.open_count(), 0);
    assert!(!book.truncated());
    assert_eq!(book.to_status(20).open_display.as_deref(), Some("0"));
}

#[test]
fn a_larger_cap_tracks_more_and_a_smaller_one_keeps_counting() {
    let mut book = IncidentBook::new(500);
    for i in 0..300 {
        book.apply(&trigger(&format!("a{i}"), i, "x"), "d");
    }
    assert_eq!(
        (book.len(), book.open_count(), book.truncated()),
        (300, 300, false)
    );
    book.set_capacity(50);
    assert_eq!(
        (book.len(), book.open_count(), book.truncated()),
        (50, 300, true)
    );
    assert_eq!(IncidentBook::new(5000).capacity(), MAX_CAPACITY);
}

#[test]
fn untracked_incidents_round_trip_and_merge_re_tracks_them() {
    let mut a = IncidentBook::new(2);
    for i in 0..4 {
        a.apply(&trigger(&format!("a{i}"), i, "x"), "d");
    }
    let (digests, overflow) = a.untracked();
    let digests: Vec<u64> = digests.collect();
    assert_eq!((digests.len(), overflow), (2, false));
    let mut restored = IncidentBook::new(2);
    restored.merge(&a.to_status(20));
    restored.restore_untracked(digests, overflow);
    assert_eq!(restored.to_status(20), a.to_status(20));
    assert_eq!(restored.untracked_open(), 2);
    // Another replica still lists a0: merging its view counts a0 once, as tracked.
    let mut other = IncidentBook::new(10);
    other.apply(&trigger("a0", 0, "x"), "d");
    let mut merged = a.clone();
    merged.set_capacity(10);
    merged.merge(&other.to_status(20));
    assert_eq!(
        (merged.open_count(), merged.untracked_open()),
        (4, 1),
        "a0 tracked again, a1 still only counted"
    );
}

#[test]
fn merging_a_larger_view_keeps_every_open_incident_it_can() {
    let mut big = IncidentBook::new(1000);
    for i in 0..150 {
        let id = format!("i{i:03}");
        big.apply(&trigger(&id, i, "x"), "d");
        if i % 3 != 0 {
            big.apply(&recovery(&id, i + 1000), "d");
        }
    }
    assert_eq!(big.open_count(), 50);
    let status = big.to_status(20);
    let mut small = IncidentBook::new(100);
    small.merge(&status);
    assert_eq!(small.len(), 100);
    assert_eq!(small.open_count(), 50, "resolved incidents go first");
    // The 50 resolved ones kept are the newest resolved.
    assert!(small.get("i149").is_some() && small.get("i001").is_none());
    let mut reversed = status.clone();
    reversed.recent.reverse();
    reversed.tracked.reverse();
    std::mem::swap(&mut reversed.recent, &mut reversed.tracked);
    let mut other = IncidentBook::new(100);
    other.merge(&reversed);
    assert_eq!(
        other.to_status(20),
        small.to_status(20),
        "entry order does not matter"
    );
}

#[test]
fn merge_is_idempotent_and_commutative() {
    let mut a = IncidentBook::default();
    let mut b = IncidentBook::default();
    a.apply(&trigger("x", 1, "x1"), "a1");
    b.apply(&recovery("x", 2), "b1");
    b.apply(&trigger("y", 1, "y1"), "b2");
    a.apply(&trigger("y", 3, "y3"), "a2");

    let (sa, sb) = (a.to_status(20), b.to_status(20));
    a.merge(&sb);
    b.merge(&sa);
    assert_eq!(a.to_status(20), b.to_status(20));
    let revision = a.revision();
    a.merge(&sb);
    a.merge(&a.to_status(20));
    assert_eq!(
        a.revision(),
        revision,
        "merging what is already known changes nothing"
    );
    assert_eq!(a.get("x").map(|i| i.state), Some(IncidentState::Resolved));
    assert_eq!(a.get("y").map(|i| i.title.as_str()), Some("y3"));
    assert_eq!(a.open_count(), 1);
}

/// Fields fixed by the newest event only, which must match exactly whatever the split.
type NewestFields = (String, String, String, String, Option<Time>, Option<Time>);

fn newest_fields(status: &IncidentsStatus) -> Vec<NewestFields> {
    let mut rows: Vec<_> = status
        .recent
        .iter()
        .chain(&status.tracked)
        .map(|s| {
            (
                s.id.clone(),
                s.state.clone(),
                s.title.clone(),
                s.order.clone().unwrap_or_default(),
                s.updated_at.clone(),
                s.resolved_at.clone(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[derive(Clone, Debug)]
struct Ev {
    id: usize,
    at_ms: i64,
    resolve: bool,
    replica_a: bool,
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (0usize..3, 0i64..20_000, any::<bool>(), any::<bool>()).prop_map(
            |(id, at_ms, resolve, replica_a)| Ev {
                id,
                at_ms,
                resolve,
                replica_a,
            },
        ),
        0..40,
    )
}

fn to_event(n: usize, e: &Ev) -> (IncidentEvent, String) {
    let ev = IncidentEvent {
        id: format!("i{}", e.id),
        title: format!("event {n}"),
        severity: if e.resolve {
            Severity::Info
        } else {
            Severity::Critical
        },
        link: None,
        resolve: e.resolve,
        event_time_ms: S + e.at_ms,
    };
    (ev, format!("delivery-{n:03}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Two replicas that each see part of the deliveries and then read each other's
    /// status end identical, and agree with one replica that saw everything on every
    /// field the newest event decides (openedAt may only be bounded, see module docs).
    #[test]
    fn replicas_converge(evs in events(), reorder in any::<prop::sample::Index>()) {
        let all: Vec<(IncidentEvent, String)> = evs.iter().enumerate().map(|(n, e)| to_event(n, e)).collect();
        let mut single = IncidentBook::default();
        for (ev, t) in &all {
            single.apply(ev, t);
        }
        let mut a = IncidentBook::default();
        let mut b = IncidentBook::default();
        for ((ev, t), e) in all.iter().zip(&evs) {
            if e.replica_a { a.apply(ev, t); } else { b.apply(ev, t); }
        }
        // B also sees its part in another order and replays some of it.
        let mut b_events: Vec<&(IncidentEvent, String)> = all.iter().zip(&evs).filter(|(_, e)| !e.replica_a).map(|(x, _)| x).collect();
        if !b_events.is_empty() {
            let k = reorder.index(b_events.len());
            b_events.rotate_left(k);
            let mut b2 = IncidentBook::default();
            for (ev, t) in b_events.iter().chain(b_events.iter().take(k)) {
                b2.apply(ev, t);
            }
            prop_assert_eq!(newest_fields(&b2.to_status(100)), newest_fields(&b.to_status(100)));
        }

        let (sa, sb) = (a.to_status(5), b.to_status(5));
        a.merge(&sb);
        b.merge(&sa);
        prop_assert_eq!(a.to_status(5), b.to_status(5));
        prop_assert_eq!(a.open_count(), single.open_count());
        prop_assert_eq!(newest_fields(&a.to_status(5)), newest_fields(&single.to_status(5)));

        // Merging again changes nothing; replaying everything changes no newest-event
        // field (it may only sharpen openedAt, which the merge had to bound).
        let before = a.to_status(5);
        a.merge(&sb);
        a.merge(&sa);
        prop_assert_eq!(a.to_status(5), before.clone());
        for (ev, t) in &all {
            prop_assert_eq!(a.apply(ev, t), Transition::Unchanged);
        }
        prop_assert_eq!(newest_fields(&a.to_status(5)), newest_fields(&before));
    }

    /// In-order delivery to one replica gives the exact episode start: the first
    /// trigger after the last recovery.
    #[test]
    fn opened_at_is_exact_in_order(mut evs in events()) {
        evs.sort_by_key(|e| e.at_ms);
        let mut book = IncidentBook::default();
        for (n, e) in evs.iter().enumerate() {
            let (ev, t) = to_event(n, e);
            book.apply(&ev, &t);
        }
        for id in 0..3 {
            let mine: Vec<&Ev> = evs.iter().filter(|e| e.id == id).collect();
            let Some(last) = mine.last() else { continue };
            if last.resolve { continue; }
            let last_recovery = mine.iter().rposition(|e| e.resolve);
            let start = mine[last_recovery.map_or(0, |p| p + 1)..]
                .iter()
                .map(|e| whole_seconds(S + e.at_ms))
                .min()
                .expect("a trigger follows");
            let incident = book.get(&format!("i{id}")).expect("tracked");
            // Within one second of a recovery the episode cannot be told apart.
            let same_second = last_recovery.is_some_and(|p| whole_seconds(S + mine[p].at_ms) >= start);
            if !same_second {
                prop_assert_eq!(incident.opened_at_ms, Some(start));
            }
        }
    }
}
