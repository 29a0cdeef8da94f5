use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_myriad-orchestrator"));
    for var in [
        "PORT",
        "HOST",
        "MAX_TASKS",
        "LOG_FORMAT",
        "GRAPH_SEED",
        "NEO4J_URI",
        "REDIS_URL",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn bad_configuration_exits_64_listing_every_problem() {
    let out = bin()
        .args(["check-config"])
        .env("PORT", "seventy")
        .env("MAX_TASKS", "0")
        .env("LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for var in ["PORT", "MAX_TASKS", "LOG_FORMAT"] {
        assert!(err.contains(var), "{var} not reported in: {err}");
    }
}

#[test]
fn a_bad_seed_file_is_rejected_at_start_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(&seed, r#"{"agents":[{"name":"A","endpoint":"http://127.0.0.1:1/q","intents":["define"]}],"handles":[{"agent":"A","concept":"ghost"}]}"#).unwrap();
    let out = bin()
        .args(["serve", "--port", "0", "--host", "127.0.0.1"])
        .env("GRAPH_SEED", &seed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown concept \"ghost\""), "{err}");
}

#[test]
fn the_openapi_subcommand_prints_the_committed_spec() {
    let out = bin().arg("openapi").output().unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(printed == committed, "regenerate openapi/openapi.json");
}
