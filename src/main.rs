//! The binary: the allocator, the runtime, and the command line (`myriad::cli`). The one
//! `unsafe` block of the project is the allocator's collect below (an FFI call with no
//! preconditions); the library forbids unsafe code.
#![deny(unsafe_code)]

use std::cell::Cell;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// mimalloc: fewer cycles per allocation than glibc's and no consolidation passes under load
/// (measured in docs/BENCHMARKS.md), idle RSS within the target.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    myriad::cores::on_park(release_freed_memory);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(myriad::cores::park_hook())
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(myriad::cli::run()),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How often a worker that goes idle may hand freed memory back.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// Called each time a runtime worker (the request cores' included) runs out of work. mimalloc keeps the pages a thread
/// freed for that thread's next allocations, and returns them to the system only as it
/// allocates again; a worker that falls idle after a burst would keep them for as long as
/// it sleeps (RSS stayed at twice its pre-load value after a burst). At most once a second
/// per worker, collect them, forced: a gentle collect left 46 % of the growth, a forced one
/// 14 % (docs/BENCHMARKS.md).
#[allow(unsafe_code)]
fn release_freed_memory() {
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    let now = Instant::now();
    LAST.with(|last| {
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= RELEASE_EVERY)
        {
            last.set(Some(now));
            // SAFETY: mi_collect only walks the calling thread's heap and the allocator's
            // own arenas; it has no preconditions.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    });
}
