//! Integration tests: the real server on port 0 against real agent HTTP servers.

mod admin;
mod agents;
mod cache;
mod cli;
mod connections;
mod discover;
mod errors;
mod graph;
mod graphql;
mod hardening;
mod helpers;
mod learning;
mod operations;
mod process;
mod production;
mod replicas;
mod resilience;
mod routing;
mod servers;
mod ship;
mod stream;
mod telemetry;
mod ws;
