use std::process::ExitCode;

/// mimalloc: fewer cycles per allocation than glibc's and no consolidation passes under load
/// (measured in docs/BENCHMARKS.md), idle RSS within the target.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    myriad::cli::run().await
}
