//! The tasks an agent answered lately, so a client can say whether an answer was right
//! (`POST /feedback`): named by the trace of the request (its `x-trace-id`) and the task's
//! id, each kept for [`FEEDBACK_WINDOW`] and taken by its first feedback — so knowing both
//! is proof of having seen the answer, and one answer moves the estimate once at most.
//! Bounded by count as well as by time ([`MAX_SERVED`]).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// How long after its answer a task takes feedback.
pub const FEEDBACK_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Answered tasks kept at most (beyond, the least recently answered are forgotten first,
/// [`EVICT_EVERY`] at a time):
/// about 2 MB. Under load the window is the shorter of 15 minutes and the last 10,000
/// answers (50 s at 200 tasks/s), each core keeping its share; 100,000 kept 19 MB after a
/// burst at 3,000 req/s.
pub const MAX_SERVED: u64 = 10_000;

/// Who answered one task, and on which concept.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedTask {
    pub agent: String,
    pub concept: String,
    /// The edge's graph weight when it answered (the estimate's prior if the pair is new).
    pub weight: f64,
}

/// A key: (trace id, hash of the task id), 24 bytes.
type Key = (u128, u64);

/// The answered tasks, first in first out: a queue under a lock, one per core. A served
/// task costs one short critical section on its own core's window, and a push at the end of
/// its queue (one window for all cores had them take its lock and its lines from each
/// other at every traced task; moka's insert, with its admission sketch and maintenance,
/// cost ~3 µs a traced request; a hash map beside the queue missed the cache at each
/// insert and each eviction: a fifth of a microsecond a traced task). Feedback, rare, looks
/// through every window (10,000 keys compared: tens of microseconds).
pub struct Served {
    windows: Box<[std::sync::Mutex<Window>]>,
    /// Answers each window keeps at most.
    cap: usize,
}

impl Default for Served {
    fn default() -> Self {
        Served::with_windows(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

static NEXT_WINDOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// The window this thread records in (threads take them in turn).
    static WINDOW: usize = NEXT_WINDOW.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// One answered task; `task` is taken by its first feedback.
struct Answer {
    key: Key,
    at: Instant,
    task: Option<ServedTask>,
}

/// A full window lets go of this many of its oldest answers at once, and a window looks
/// for answers past [`FEEDBACK_WINDOW`] once in this many answers: the oldest are read in
/// one pass (read one at a time, at every answer, the oldest missed the cache each time:
/// ~0.2 µs a traced task). Feedback still refuses an answer past its time.
const EVICT_EVERY: usize = 64;

#[derive(Default)]
struct Window {
    /// Answers in the order they were given, oldest first.
    order: VecDeque<Answer>,
    /// Answers recorded in it (wrapping).
    recorded: usize,
}

impl Window {
    /// The task of the latest answer of `key`, taken; every earlier answer of it (answered
    /// again) is let go with it, so one task takes one feedback.
    fn take(&mut self, k: &Key) -> Option<(ServedTask, Instant)> {
        let mut found = None;
        for a in self.order.iter_mut().rev().filter(|a| a.key == *k) {
            if let Some(task) = a.task.take() {
                found.get_or_insert((task, a.at));
            }
        }
        found
    }
}

impl Served {
    /// `n` windows (at least one), [`MAX_SERVED`] answers among them.
    pub fn with_windows(n: usize) -> Self {
        let n = n.clamp(1, 64);
        Served {
            windows: (0..n).map(|_| Default::default()).collect(),
            cap: (MAX_SERVED as usize).div_ceil(n),
        }
    }

    /// `task` of the request traced as `trace_id` was answered; `task_id` as the task gave
    /// it (a string, or a number feedback names in its text).
    pub fn record(&self, trace_id: u128, task_id: &serde_json::Value, task: ServedTask) {
        let k = (trace_id, id_hash(task_id));
        let now = Instant::now();
        let window = &self.windows[WINDOW.with(|w| *w) % self.windows.len()];
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        w.recorded = w.recorded.wrapping_add(1);
        let full = w.order.len() >= self.cap;
        if full || w.recorded % EVICT_EVERY == 0 {
            let mut freed = 0;
            while w.order.front().is_some_and(|a| {
                (full && freed < EVICT_EVERY) || now.duration_since(a.at) >= FEEDBACK_WINDOW
            }) {
                w.order.pop_front();
                freed += 1;
            }
        }
        w.order.push_back(Answer {
            key: k,
            at: now,
            task: Some(task),
        });
    }

    /// The task, if it was answered within the window and had no feedback yet.
    pub fn take(&self, trace_id: &str, task_id: &str) -> Option<ServedTask> {
        let k = key(trace_id, task_id)?;
        let (task, at) = self.windows.iter().find_map(|window| {
            let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
            w.take(&k)
        })?;
        (at.elapsed() < FEEDBACK_WINDOW).then_some(task)
    }
}

/// A trace id is 32 hexadecimal digits; a task id is hashed (ids of one trace are few).
fn key(trace_id: &str, task_id: &str) -> Option<(u128, u64)> {
    let trace = u128::from_str_radix(trace_id, 16).ok()?;
    Some((trace, task_hash(task_id)))
}

/// The hash of a task id's text: its bytes, fed as they come.
fn task_hash(task_id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(task_id.as_bytes());
    h.finish()
}

/// [`task_hash`] of the text [`crate::pipeline::task_key`] gives `id`, without building it.
fn id_hash(id: &serde_json::Value) -> u64 {
    use std::hash::Hasher;
    struct Feed(std::hash::DefaultHasher);
    impl std::fmt::Write for Feed {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.write(s.as_bytes());
            Ok(())
        }
    }
    match id {
        serde_json::Value::String(s) => task_hash(s),
        other => {
            let mut h = Feed(std::hash::DefaultHasher::new());
            let _ = std::fmt::Write::write_fmt(&mut h, format_args!("{other}"));
            h.0.finish()
        }
    }
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
        s.record(0x0af7651916cd43dd8448eb211c80319c, &"1".into(), t.clone());
        assert_eq!(s.take("0af7651916cd43dd8448eb211c80319c", "2"), None);
        assert_eq!(s.take("0af7651916cd43dd8448eb211c80319c", "1"), Some(t));
        assert_eq!(s.take("0af7651916cd43dd8448eb211c80319c", "1"), None);
    }

    #[test]
    fn a_task_answered_again_takes_one_feedback_for_its_latest_answer() {
        let s = Served::with_windows(1);
        let t = |agent: &str| ServedTask {
            agent: agent.into(),
            concept: "c".into(),
            weight: 0.5,
        };
        let trace = 0x0af7651916cd43dd8448eb211c80319c;
        s.record(trace, &"1".into(), t("first"));
        s.record(trace, &"2".into(), t("other"));
        s.record(trace, &"1".into(), t("again"));
        let hex = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(s.take(hex, "1"), Some(t("again")));
        assert_eq!(s.take(hex, "1"), None, "the earlier answer went with it");
        assert_eq!(s.take(hex, "2"), Some(t("other")));
    }

    #[test]
    fn a_task_id_that_is_a_number_is_found_by_its_text() {
        let s = Served::default();
        let t = ServedTask {
            agent: "a".into(),
            concept: "c".into(),
            weight: 0.5,
        };
        let trace = "0af7651916cd43dd8448eb211c80319c";
        for id in [
            serde_json::json!(7),
            serde_json::json!(-12345678901234567i64),
            serde_json::json!(18446744073709551615u64),
            serde_json::json!(1.5),
        ] {
            s.record(0x0af7651916cd43dd8448eb211c80319c, &id, t.clone());
            let text = crate::pipeline::task_key(&id);
            assert_eq!(s.take(trace, &text), Some(t.clone()), "{text}");
        }
    }

    #[test]
    fn the_oldest_answers_are_forgotten_first_past_the_cap() {
        let s = Served::with_windows(1);
        let t = ServedTask {
            agent: "a".into(),
            concept: "c".into(),
            weight: 0.5,
        };
        let trace = "0af7651916cd43dd8448eb211c80319c";
        for i in 0..MAX_SERVED + 10 {
            s.record(
                0x0af7651916cd43dd8448eb211c80319c,
                &i.to_string().into(),
                t.clone(),
            );
        }
        // The first past the cap let go of the oldest 64 at once; nine more since.
        let kept = s.windows[0].lock().unwrap().order.len() as u64;
        assert_eq!(kept, MAX_SERVED - 64 + 10, "{kept}");
        assert_eq!(s.take(trace, "0"), None, "the oldest: forgotten");
        assert_eq!(s.take(trace, "63"), None, "among the oldest 64: forgotten");
        assert_eq!(s.take(trace, "64"), Some(t.clone()));
        assert_eq!(s.take(trace, &(MAX_SERVED + 9).to_string()), Some(t));
    }

    #[test]
    fn each_thread_records_in_the_window_of_its_turn_and_feedback_finds_every_one() {
        let s = std::sync::Arc::new(Served::with_windows(2));
        let t = |agent: &str| ServedTask {
            agent: agent.into(),
            concept: "c".into(),
            weight: 0.5,
        };
        let trace = 0x0af7651916cd43dd8448eb211c80319c;
        let mut turns = Vec::new();
        for (i, agent) in ["a", "b"].into_iter().enumerate() {
            let s = s.clone();
            let task = t(agent);
            let turn = std::thread::spawn(move || {
                s.record(trace, &i.to_string().into(), task);
                WINDOW.with(|w| *w)
            })
            .join()
            .unwrap();
            turns.push(turn);
        }
        for (i, turn) in turns.iter().enumerate() {
            let w = s.windows[turn % 2].lock().unwrap();
            let k = (trace, task_hash(&i.to_string()));
            assert!(w.order.iter().any(|a| a.key == k));
        }
        let hex = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(s.take(hex, "1"), Some(t("b")));
        assert_eq!(s.take(hex, "0"), Some(t("a")));
        assert_eq!(s.take(hex, "0"), None);
        assert_eq!(s.cap, 5_000, "the windows share the bound");
    }
}
