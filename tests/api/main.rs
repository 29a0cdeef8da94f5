//! Integration tests: the real server on port 0 against real agent HTTP servers.

mod agents;
mod cli;
mod discover;
mod errors;
mod helpers;
mod learning;
mod operations;
mod process;
mod resilience;
