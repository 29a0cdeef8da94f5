//! What ships: the Dockerfile and compose file validate, and the k6 smoke suite passes its
//! thresholds against the real binary on loopback.

use std::process::Command;

use crate::helpers::spawn_process;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_compose_file_validates() {
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(ROOT)
        .output()
        .expect("docker-compose is installed (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = Command::new("hadolint")
        .arg("Dockerfile")
        .current_dir(ROOT)
        .output()
        .expect("hadolint is installed (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn the_k6_smoke_suite_passes_its_thresholds() {
    let app = spawn_process(&[("RUST_LOG", "warn,myriad::startup=info".into())], None);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("k6")
            .args(["run", "--quiet", "--no-color", "loadtests/smoke.js"])
            .env("BASE_URL", &app.base)
            .env("K6_NO_USAGE_REPORT", "true")
            .current_dir(ROOT)
            .output()
            .expect("k6 is installed (scripts/install-test-deps.sh)")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "k6 thresholds failed:\n{text}");
}

#[test]
fn the_healthcheck_subcommand_fails_when_nothing_listens() {
    let out = Command::new(env!("CARGO_BIN_EXE_myriad-orchestrator"))
        .args([
            "healthcheck",
            "--url",
            "http://127.0.0.1:9/health",
            "--timeout-ms",
            "500",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn the_healthcheck_subcommand_passes_against_a_running_server() {
    let app = spawn_process(&[], None);
    let url = format!("{}/health", app.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_myriad-orchestrator"))
            .args(["healthcheck", "--url", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn schemathesis_finds_no_failure_against_the_served_spec() {
    // Every check but `positive_data_acceptance`: duplicate task ids are a 400 by contract,
    // and JSON Schema cannot express uniqueness of one property across array items.
    let app = spawn_process(&[("RUST_LOG", "warn,myriad::startup=info".into())], None);
    let spec = format!("{}/openapi.json", app.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("st")
            .args([
                "run",
                &spec,
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            .args(["--max-examples", "150", "--seed", "20261123", "--no-color"])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .output()
            .expect("schemathesis is installed (scripts/install-test-deps.sh)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{}",
        &text[text.len().saturating_sub(6000)..]
    );
    assert!(
        text.contains("Stateful"),
        "the stateful phase did not run:\n{text}"
    );
}

#[tokio::test]
async fn a_generated_client_calls_every_endpoint() {
    const KEY: &str = "generated-client-key-0123";
    let app = spawn_process(
        &[
            ("API_KEYS", KEY.into()),
            ("ADMIN_API_KEY", "generated-admin".into()),
            ("RUST_LOG", "warn,myriad::startup=info".into()),
        ],
        None,
    );
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let gen = Command::new("openapi-python-client")
            .args([
                "generate",
                "--path",
                "openapi/openapi.json",
                "--meta",
                "none",
                "--output-path",
            ])
            .arg(dir.path().join("client"))
            .current_dir(ROOT)
            .output()
            .expect("openapi-python-client is installed (scripts/install-test-deps.sh)");
        assert!(
            gen.status.success(),
            "{}",
            String::from_utf8_lossy(&gen.stderr)
        );
        let generated = String::from_utf8_lossy(&gen.stdout).to_string();
        assert!(
            !generated.contains("Unable to process"),
            "the spec did not generate cleanly:\n{generated}"
        );
        let run = Command::new("python3")
            .arg(format!("{ROOT}/tests/client/call_every_endpoint.py"))
            .args([&base, KEY, "generated-admin", "http://127.0.0.1:9/query"])
            .env("PYTHONPATH", dir.path())
            .output()
            .unwrap();
        (run, dir)
    })
    .await
    .unwrap();
    let (run, _dir) = out;
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

#[tokio::test]
async fn swagger_ui_in_a_real_browser_lists_every_operation_and_try_it_out_works() {
    let app = spawn_process(&[("RUST_LOG", "warn,myriad::startup=info".into())], None);
    let base = app.base.clone();
    let out =
        crate::helpers::run_script("node", vec!["tests/browser/swagger.mjs".into(), base]).await;
    let seen: serde_json::Value =
        serde_json::from_str(&out).expect("the browser script printed JSON");
    let paths: Vec<&str> = seen["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for op in [
        "GET /health",
        "GET /ready",
        "GET /status",
        "GET /agents",
        "GET /metrics",
        "GET /metrics/json",
        "POST /discover",
        "POST /process",
        "POST /process_query",
        "POST /agents",
        "DELETE /agents/{name}",
    ] {
        assert!(
            paths.contains(&op),
            "{op} is not listed in Swagger UI: {paths:?}"
        );
    }
    assert_eq!(seen["status"], "200");
    assert!(seen["body"].as_str().unwrap().contains("\"healthy\""));
}

/// The manifests of `deploy/kubernetes`, in the order its kustomization lists them.
fn kubernetes_manifests() -> Vec<String> {
    let kustomization =
        std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/kustomization.yaml")).unwrap();
    let listed: Vec<String> = kustomization
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|f| format!("deploy/kubernetes/{f}"))
        .collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(format!("{ROOT}/deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .map(|f| format!("deploy/kubernetes/{f}"))
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, on_disk, "the kustomization lists every manifest");
    listed
}

#[test]
fn the_kubernetes_manifests_validate_against_the_api_schemas() {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.31.0"])
        .args(kubernetes_manifests())
        .current_dir(ROOT)
        .output()
        .expect("kubernetes-validate is installed (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_kubernetes_deployment_keeps_the_rules_of_a_production_pod() {
    // What the schemas cannot say: replicas, probes on the right endpoints, a grace period
    // longer than the drain, a locked-down container, spread across zones.
    const SCRIPT: &str = r#"
import json, sys, yaml
docs = {}
for f in sys.argv[1:]:
    for d in yaml.safe_load_all(open(f)):
        docs[d["kind"]] = d
dep, cm = docs["Deployment"], docs["ConfigMap"]
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
print(json.dumps({
  "replicas": dep["spec"]["replicas"],
  "liveness": c["livenessProbe"]["httpGet"]["path"],
  "readiness": c["readinessProbe"]["httpGet"]["path"],
  "startup": c["startupProbe"]["httpGet"]["path"],
  "grace": pod["terminationGracePeriodSeconds"],
  "drain": int(cm["data"]["SHUTDOWN_DRAIN_S"]),
  "pre_stop": c["lifecycle"]["preStop"]["sleep"]["seconds"],
  "non_root": pod["securityContext"]["runAsNonRoot"],
  "read_only": c["securityContext"]["readOnlyRootFilesystem"],
  "escalation": c["securityContext"]["allowPrivilegeEscalation"],
  "caps": c["securityContext"]["capabilities"]["drop"],
  "limits": sorted(c["resources"]["limits"]), "requests": sorted(c["resources"]["requests"]),
  "zones": [t["topologyKey"] for t in pod["topologySpreadConstraints"]],
  "secret": [e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e],
  "hpa_min": docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"],
  "pdb": docs["PodDisruptionBudget"]["spec"]["minAvailable"],
}))
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .args(kubernetes_manifests())
        .current_dir(ROOT)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(d["replicas"].as_u64().unwrap() >= 3);
    assert_eq!(d["hpa_min"], d["replicas"]);
    assert!(d["pdb"].as_u64().unwrap() < d["replicas"].as_u64().unwrap());
    assert_eq!(
        (&d["liveness"], &d["readiness"], &d["startup"]),
        (
            &serde_json::json!("/health"),
            &serde_json::json!("/ready"),
            &serde_json::json!("/health")
        )
    );
    let (grace, drain, pre_stop) = (
        d["grace"].as_u64().unwrap(),
        d["drain"].as_u64().unwrap(),
        d["pre_stop"].as_u64().unwrap(),
    );
    assert!(
        grace > drain + pre_stop,
        "grace {grace} s must exceed drain {drain} s + preStop {pre_stop} s"
    );
    assert_eq!(d["non_root"], true);
    assert_eq!(d["read_only"], true);
    assert_eq!(d["escalation"], false);
    assert_eq!(d["caps"], serde_json::json!(["ALL"]));
    assert_eq!(d["limits"], serde_json::json!(["cpu", "memory"]));
    assert_eq!(d["requests"], serde_json::json!(["cpu", "memory"]));
    assert!(d["zones"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("topology.kubernetes.io/zone")));
    assert_eq!(d["secret"], serde_json::json!(["myriad-orchestrator"]));
}
