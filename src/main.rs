use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    myriad::cli::run().await
}
