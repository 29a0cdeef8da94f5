//! Where the subscriber keeps live spans: slots in pages allocated once and never moved,
//! each slot under its own lock and found by its index, reused under a new generation once
//! its span closed (an id of a closed span then names nothing).
//!
//! Why not `sharded-slab`: its look-up takes and releases a reference on the slot (two
//! atomic read-modify-writes) around the lock each span record needs anyway (two more),
//! and its removal a few more. Here a look-up is the slot's lock, and nothing else is
//! shared: a thread reuses the slots it freed (a per-thread list, without atomics), and a
//! thread that frees more than it takes (a span opened on one runtime thread and closed on
//! another) passes the surplus to a shared list that threads short of slots draw from (and
//! a thread that ends, all of its list), so the arena grows only with the spans open at
//! once.

use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
};

/// Slots in the first page; each page holds twice the one before.
const FIRST_PAGE: usize = 64;
/// Pages at most: room for `FIRST_PAGE × (2^PAGES − 1)` spans open at once.
const PAGES: usize = 26;
/// Free slots a thread keeps before passing the surplus to the shared list.
const LOCAL_FREE: usize = 256;

struct Slot<T> {
    /// Incremented each time the slot is freed: ids carry the one they were given under.
    generation: u32,
    value: Option<T>,
}

/// A value at a slot, locked; dropping it unlocks the slot.
pub struct Entry<'a, T>(MutexGuard<'a, Slot<T>>);

impl<T> std::ops::Deref for Entry<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.value.as_ref().expect("an entry holds a value")
    }
}

impl<T> std::ops::DerefMut for Entry<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.value.as_mut().expect("an entry holds a value")
    }
}

/// A page of slots, allocated when first needed.
type Page<T> = OnceLock<Box<[Mutex<Slot<T>>]>>;

pub struct Arena<T> {
    pages: [Page<T>; PAGES],
    /// Slots handed out for the first time so far.
    fresh: AtomicUsize,
    /// Freed slots threads passed on.
    shared: Arc<Mutex<Vec<usize>>>,
    /// Which arena a thread's free list belongs to (tests make several).
    id: usize,
}

static ARENA_IDS: AtomicUsize = AtomicUsize::new(1);

/// A thread's free slots, of the arena `arena`; given back to its shared list when the
/// thread ends.
#[derive(Default)]
struct Local {
    arena: usize,
    list: Vec<usize>,
    shared: Option<Arc<Mutex<Vec<usize>>>>,
}

impl Local {
    /// This thread's list for `arena` (another arena's, of a test, is given back first).
    fn of<T>(&mut self, arena: &Arena<T>) -> &mut Vec<usize> {
        if self.arena != arena.id {
            self.flush();
            self.arena = arena.id;
            self.shared = Some(arena.shared.clone());
        }
        &mut self.list
    }

    fn flush(&mut self) {
        if let Some(shared) = self.shared.take() {
            locked(&shared).append(&mut self.list);
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    static FREE: RefCell<Local> = RefCell::new(Local::default());
}

fn locked<S>(m: &Mutex<S>) -> MutexGuard<'_, S> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The page of slot `index` and its place in it.
fn place(index: usize) -> (usize, usize) {
    let page = (index / FIRST_PAGE + 1).ilog2() as usize;
    (page, index - FIRST_PAGE * ((1 << page) - 1))
}

/// An id: the slot and its generation, never zero.
fn id(index: usize, generation: u32) -> u64 {
    ((u64::from(generation) << 32) | index as u64) + 1
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena {
            pages: std::array::from_fn(|_| OnceLock::new()),
            fresh: AtomicUsize::new(0),
            shared: Arc::default(),
            id: ARENA_IDS.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl<T> Arena<T> {
    fn slot(&self, index: usize) -> Option<&Mutex<Slot<T>>> {
        let (page, at) = place(index);
        let page = self.pages.get(page)?.get_or_init(|| {
            (0..FIRST_PAGE << page)
                .map(|_| {
                    Mutex::new(Slot {
                        generation: 0,
                        value: None,
                    })
                })
                .collect()
        });
        page.get(at)
    }

    /// A free slot: this thread's, the shared list's, or one never used.
    fn take_free(&self) -> usize {
        let local = FREE.with(|f| f.borrow_mut().of(self).pop());
        local
            .or_else(|| locked(&self.shared).pop())
            .unwrap_or_else(|| self.fresh.fetch_add(1, Ordering::Relaxed))
    }

    fn give_back(&self, index: usize) {
        let surplus = FREE.with(|f| {
            let mut f = f.borrow_mut();
            let list = f.of(self);
            list.push(index);
            (list.len() > LOCAL_FREE).then(|| list.split_off(LOCAL_FREE / 2))
        });
        if let Some(surplus) = surplus {
            locked(&self.shared).extend(surplus);
        }
    }

    /// Keeps `value`; its id, or `None` when the arena is full.
    pub fn insert(&self, value: T) -> Option<u64> {
        let index = self.take_free();
        let mut slot = locked(self.slot(index)?);
        slot.value = Some(value);
        Some(id(index, slot.generation))
    }

    /// The value of `id`, locked, if it is still there.
    pub fn get(&self, id: u64) -> Option<Entry<'_, T>> {
        let raw = id.checked_sub(1)?;
        let slot = locked(self.slot((raw & 0xffff_ffff) as usize)?);
        (slot.generation == (raw >> 32) as u32 && slot.value.is_some()).then_some(Entry(slot))
    }

    /// Removes the value of `id` when `remove` says so; the value removed.
    pub fn remove_if(&self, id: u64, remove: impl FnOnce(&mut T) -> bool) -> Option<T> {
        let raw = id.checked_sub(1)?;
        let index = (raw & 0xffff_ffff) as usize;
        let removed = {
            let mut slot = locked(self.slot(index)?);
            if slot.generation != (raw >> 32) as u32 || !remove(slot.value.as_mut()?) {
                return None;
            }
            slot.generation = slot.generation.wrapping_add(1);
            slot.value.take()
        };
        self.give_back(index);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_found_by_id_reused_under_a_new_generation_and_pages_tile_the_indices() {
        for (index, want) in [
            (0, (0, 0)),
            (63, (0, 63)),
            (64, (1, 0)),
            (191, (1, 127)),
            (192, (2, 0)),
        ] {
            assert_eq!(place(index), want, "{index}");
        }
        let arena = Arena::default();
        let a = arena.insert("a").unwrap();
        let b = arena.insert("b").unwrap();
        assert_eq!(*arena.get(a).unwrap(), "a");
        *arena.get(b).unwrap() = "B";
        assert_eq!(arena.remove_if(b, |_| false), None, "kept when told so");
        assert_eq!(arena.remove_if(b, |_| true), Some("B"));
        assert!(arena.get(b).is_none(), "a closed id names nothing");
        let c = arena.insert("c").unwrap();
        assert_ne!(c, b, "the slot again, under a new generation");
        assert_eq!(c & 0xffff_ffff, b & 0xffff_ffff);
        assert!(arena.get(b).is_none() && arena.remove_if(b, |_| true).is_none());
        assert_eq!(*arena.get(c).unwrap(), "c");
        assert!(arena.get(0).is_none() && arena.get(u64::MAX).is_none());
    }

    #[test]
    fn spans_opened_on_one_thread_and_closed_on_another_do_not_grow_it() {
        let arena = std::sync::Arc::new(Arena::default());
        for _ in 0..50 {
            let ids: Vec<u64> = (0..100).map(|i| arena.insert(i).unwrap()).collect();
            let other = arena.clone();
            std::thread::spawn(move || {
                for id in ids {
                    assert!(other.remove_if(id, |_| true).is_some());
                }
            })
            .join()
            .unwrap();
        }
        // 5,000 spans, 100 open at once: what the closing threads freed came back (each
        // thread's list when it ended).
        let fresh = arena.fresh.load(Ordering::Relaxed);
        assert!(fresh <= 200, "{fresh} slots for 100 spans open at once");
    }
}
