//! The tasks an agent answered lately, so a client can say whether an answer was right
//! (`POST /feedback`): named by the trace of the request (its `x-trace-id`) and the task's
//! id, each kept for [`FEEDBACK_WINDOW`] and taken by its first feedback — so knowing both
//! is proof of having seen the answer, and one answer moves the estimate once at most.
//! Bounded by count as well as by time ([`MAX_SERVED`]).

use std::time::Duration;

/// How long after its answer a task takes feedback.
pub const FEEDBACK_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Answered tasks kept at most (beyond, the least recently answered are forgotten first):
/// about 2 MB. Under load the window is the shorter of 15 minutes and the last 10,000
/// answers (50 s at 200 tasks/s); 100,000 kept 19 MB after a burst at 3,000 req/s.
pub const MAX_SERVED: u64 = 10_000;

/// Who answered one task, and on which concept.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedTask {
    pub agent: String,
    pub concept: String,
    /// The edge's graph weight when it answered (the estimate's prior if the pair is new).
    pub weight: f64,
}

pub struct Served {
    /// By (trace id, hash of the task id): 24 bytes a key.
    tasks: moka::sync::Cache<(u128, u64), ServedTask>,
}

impl Default for Served {
    fn default() -> Self {
        Served {
            tasks: moka::sync::Cache::builder()
                .max_capacity(MAX_SERVED)
                .time_to_live(FEEDBACK_WINDOW)
                .build(),
        }
    }
}

impl Served {
    /// `task` of the request traced as `trace_id` was answered.
    pub fn record(&self, trace_id: &str, task_id: &str, task: ServedTask) {
        if let Some(k) = key(trace_id, task_id) {
            self.tasks.insert(k, task);
        }
    }

    /// The task, if it was answered within the window and had no feedback yet.
    pub fn take(&self, trace_id: &str, task_id: &str) -> Option<ServedTask> {
        self.tasks.remove(&key(trace_id, task_id)?)
    }
}

/// A trace id is 32 hexadecimal digits; a task id is hashed (ids of one trace are few).
fn key(trace_id: &str, task_id: &str) -> Option<(u128, u64)> {
    use std::hash::{Hash, Hasher};
    let trace = u128::from_str_radix(trace_id, 16).ok()?;
    let mut h = std::hash::DefaultHasher::new();
    task_id.hash(&mut h);
    Some((trace, h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_takes_one_feedback() {
        let s = Served::default();
        let t = ServedTask {
            agent: "a".into(),
            concept: "c".into(),
            weight: 0.5,
        };
        s.record("0af7651916cd43dd8448eb211c80319c", "1", t.clone());
        assert_eq!(s.take("0af7651916cd43dd8448eb211c80319c", "2"), None);
        assert_eq!(s.take("0af7651916cd43dd8448eb211c80319c", "1"), Some(t));
        assert_eq!(s.take("0af7651916cd43dd8448eb211c80319c", "1"), None);
    }
}
