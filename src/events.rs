//! Kubernetes Events that keep their message.
//!
//! kube-runtime's [`Recorder`] (5.0) folds every Event with the same type, reason, action,
//! reporter and object into one series for six minutes, whatever its note says (its docs
//! name the note as part of the key; the code leaves it out, unlike client-go's). For
//! hookwarden that turned "incident B opened" into a second count of "incident A opened",
//! and a second missing Secret into a repeat of the first. [`EventRecorder`] keeps one
//! kube `Recorder` per distinct note: the same message repeated still becomes one Event
//! with a series count, different messages stay separate Events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};

/// Distinct notes remembered at once. Past it the least recently used is forgotten, which
/// only means its next repeat starts a new Event instead of counting in the old series.
const MAX_NOTES: usize = 1024;

/// Publishes Events like kube's [`Recorder`], with the note in the aggregation key.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    reporter: Reporter,
    by_note: Arc<Mutex<HashMap<String, (Recorder, Instant)>>>,
}

impl EventRecorder {
    pub fn new(client: Client, reporter: Reporter) -> EventRecorder {
        EventRecorder {
            client,
            reporter,
            by_note: Arc::default(),
        }
    }

    /// Creates the Event, or counts it in the series of an identical one (same reason,
    /// action, type, object and note) published in the last six minutes.
    pub async fn publish(
        &self,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let recorder = self.recorder_for(event.note.as_deref().unwrap_or_default());
        recorder.publish(event, reference).await
    }

    fn recorder_for(&self, note: &str) -> Recorder {
        let mut by_note = self.by_note.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some((recorder, used)) = by_note.get_mut(note) {
            *used = now;
            return recorder.clone();
        }
        if by_note.len() >= MAX_NOTES
            && let Some(oldest) = by_note
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(note, _)| note.clone())
        {
            by_note.remove(&oldest);
        }
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        by_note.insert(note.to_string(), (recorder.clone(), now));
        recorder
    }

    /// Whether a recorder for `note` is kept (for tests).
    #[cfg(test)]
    fn remembers(&self, note: &str) -> bool {
        self.by_note
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(note)
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.by_note
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> EventRecorder {
        // Never contacted: only the per-note bookkeeping is under test here (the
        // emulator-backed end-to-end test checks the Events themselves).
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        EventRecorder::new(
            client,
            Reporter {
                controller: "test".into(),
                instance: None,
            },
        )
    }

    #[tokio::test]
    async fn one_recorder_per_note_and_the_least_recently_used_is_forgotten() {
        let events = recorder();
        events.recorder_for("incident a opened");
        events.recorder_for("incident b opened");
        events.recorder_for("incident a opened");
        assert_eq!(
            events.remembered(),
            2,
            "a repeated note reuses its recorder"
        );
        for i in 0..MAX_NOTES - 2 {
            events.recorder_for(&format!("note {i}"));
        }
        assert_eq!(events.remembered(), MAX_NOTES);
        assert!(events.remembers("incident b opened"));
        // One more: the least recently used goes, "b" (used before "a" was used again).
        events.recorder_for("one more");
        assert_eq!(events.remembered(), MAX_NOTES);
        assert!(!events.remembers("incident b opened"));
        assert!(events.remembers("incident a opened"));
        assert!(events.remembers("one more"));
    }
}
