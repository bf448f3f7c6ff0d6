//! `deploy/kubernetes`, rendered by `kubectl kustomize` as a user would and
//! read back into the Kubernetes API's own types (k8s-openapi, v1.32): every
//! field must be one the API knows (a document that does not survive the
//! round trip through its type has a misspelt or misplaced field), and the
//! pieces must agree with each other and with augur's configuration —
//! ports, probes, the config file's path, the shutdown budget.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::Path;
use std::process::Command;

use augur_config::Config;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The rendered documents, as JSON values.
fn render() -> Vec<serde_json::Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kubernetes");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl, which renders the manifests (kubectl kustomize): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .collect()
}

/// `doc` as `T`, which must give back every field of it.
fn typed<T: DeserializeOwned + Serialize>(doc: &serde_json::Value) -> T {
    let name = &doc["metadata"]["name"];
    let value: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {name}: {e}", doc["kind"]));
    let back = serde_json::to_value(&value).unwrap();
    if let Some(path) = lost(doc, &back, String::new()) {
        panic!(
            "{} {name}: {path} is not a field the API knows",
            doc["kind"]
        );
    }
    value
}

/// The first path in `original` that `back` does not have the same.
fn lost(original: &serde_json::Value, back: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => lost(v, w, format!("{at}.{k}")),
            None => Some(format!("{at}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| lost(v, w, format!("{at}[{i}]"))),
        (a, b) if a == b => None,
        _ => Some(at),
    }
}

struct Rendered {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
}

fn rendered() -> Rendered {
    let mut r = Rendered {
        deployments: Vec::new(),
        services: Vec::new(),
        config_maps: Vec::new(),
    };
    for doc in render() {
        match doc["kind"].as_str() {
            Some("Deployment") => r.deployments.push(typed(&doc)),
            Some("Service") => r.services.push(typed(&doc)),
            Some("ConfigMap") => r.config_maps.push(typed(&doc)),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    r
}

fn name<
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    object: &T,
) -> &str {
    object.metadata().name.as_deref().unwrap_or("")
}

fn pod(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .unwrap()
}

/// A named container port's number.
fn port(container: &Container, name: &str) -> i32 {
    container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{} has no port {name:?}", container.name))
        .container_port
}

/// The named port an HTTP probe asks, and its path.
fn http_probe(probe: Option<&k8s_openapi::api::core::v1::Probe>) -> (String, String) {
    let get = probe.and_then(|p| p.http_get.as_ref()).unwrap();
    let port = match &get.port {
        IntOrString::String(name) => name.clone(),
        IntOrString::Int(n) => n.to_string(),
    };
    (port, get.path.clone().unwrap_or_default())
}

/// augur's configuration as the sidecar will load it: the ConfigMap's file
/// with the container's `AUGUR_` variables applied.
fn sidecar_config(r: &Rendered, augur: &Container, pod: &PodSpec) -> Config {
    let args = augur.args.clone().unwrap_or_default();
    let at = args.iter().position(|a| a == "--config").unwrap();
    let path = Path::new(&args[at + 1]);
    let mount = augur
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| path.starts_with(&m.mount_path))
        .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let map_name = volume.config_map.as_ref().unwrap().name.clone();
    let map = r
        .config_maps
        .iter()
        .find(|m| name(*m) == map_name)
        .unwrap_or_else(|| panic!("no ConfigMap {map_name:?} (kustomize names it)"));
    let file = path.strip_prefix(&mount.mount_path).unwrap();
    let text = &map.data.as_ref().unwrap()[file.to_str().unwrap()];
    let env: Vec<(String, String)> = augur
        .env
        .iter()
        .flatten()
        .filter(|e| e.name.starts_with("AUGUR_"))
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    augur_config::parse_with_env(text, &env)
        .unwrap_or_else(|e| panic!("the sidecar's configuration does not load:\n{e}"))
}

#[test]
fn the_manifests_render_into_the_api_types_and_agree_with_augurs_configuration() {
    let r = rendered();
    let frontend = r
        .deployments
        .iter()
        .find(|d| name(*d) == "frontend")
        .unwrap();
    let pod = pod(frontend);

    // augur is a native sidecar: an init container that keeps running.
    let inits = pod.init_containers.as_deref().unwrap_or_default();
    let augur = inits.iter().find(|c| c.name == "augur").unwrap();
    assert_eq!(augur.restart_policy.as_deref(), Some("Always"));
    let config = sidecar_config(&r, augur, pod);

    // Its listeners and the ports the pod declares.
    let ingress = port(augur, "ingress");
    let admin = port(augur, "admin");
    assert_eq!(ingress, i32::from(config.service.listen.port()));
    assert_eq!(admin, i32::from(config.admin.listen.port()));
    assert!(
        config.admin.listen.ip().is_unspecified() && config.service.listen.ip().is_unspecified(),
        "the kubelet and the Service reach the pod's address, not its loopback"
    );

    // Probes on the admin port: ready and started on /readyz, alive on
    // /healthz.
    let admin_name = "admin".to_string();
    assert_eq!(
        http_probe(augur.startup_probe.as_ref()),
        (admin_name.clone(), "/readyz".into())
    );
    assert_eq!(
        http_probe(augur.readiness_probe.as_ref()),
        (admin_name.clone(), "/readyz".into())
    );
    assert_eq!(
        http_probe(augur.liveness_probe.as_ref()),
        (admin_name, "/healthz".into())
    );
    let requests = augur
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));

    // Prometheus scrapes the admin port.
    let annotations = frontend
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // The frontend Service sends its traffic through augur's ingress.
    let service = r.services.iter().find(|s| name(*s) == "frontend").unwrap();
    let target = service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .target_port
        .clone();
    assert_eq!(target, Some(IntOrString::String("ingress".into())));

    // The application listens where augur's upstream is and calls its
    // dependencies at augur's egress listeners.
    let app = &pod.containers[0];
    let args = app.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains(&format!("--listen={}", config.service.upstream)),
        "{args}"
    );
    for dep in &config.dependencies {
        assert!(
            dep.listen.ip().is_loopback(),
            "{}: {}",
            dep.name,
            dep.listen
        );
        assert!(
            args.contains(&format!("--{}={}", dep.name, dep.listen)),
            "the frontend does not call {} through augur: {args}",
            dep.name
        );
        let augur_config::Target::Static(upstream) = &dep.target else {
            panic!("{}: a cluster runs dependencies as Services", dep.name);
        };
        let backing = r
            .services
            .iter()
            .find(|s| name(*s) == upstream.host)
            .unwrap_or_else(|| panic!("no Service {:?} for {}", upstream.host, dep.name));
        let ports = backing.spec.as_ref().unwrap().ports.as_ref().unwrap();
        assert!(
            ports.iter().any(|p| p.port == i32::from(upstream.port)),
            "Service {} has no port {}",
            upstream.host,
            upstream.port
        );
    }

    // augur drains within the pod's grace period, and keeps the egress
    // open for a while after SIGTERM.
    let grace = pod.termination_grace_period_seconds.unwrap();
    assert!(
        config.proxy.shutdown_timeout.as_secs() < u64::try_from(grace).unwrap(),
        "proxy.shutdown_timeout {:?} does not fit in terminationGracePeriodSeconds {grace}",
        config.proxy.shutdown_timeout
    );
    assert!(config.proxy.drain_grace.as_secs() >= 1);

    // Every Deployment's selector picks its own pods, and each Service
    // selects pods that exist.
    for d in &r.deployments {
        let spec = d.spec.as_ref().unwrap();
        let selector = spec.selector.match_labels.as_ref().unwrap();
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .unwrap();
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "Deployment {}", name(d));
        }
    }
    for s in &r.services {
        let selector = s.spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert!(
            r.deployments.iter().any(|d| {
                let labels = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.metadata.as_ref())
                    .and_then(|m| m.labels.as_ref());
                labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
            }),
            "Service {} selects no pods",
            name(s)
        );
    }
}

#[test]
fn a_misspelt_field_does_not_survive_the_round_trip() {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPort": "ingress", "protocl": "TCP"}]}
    });
    let back =
        serde_json::to_value(serde_json::from_value::<Service>(doc.clone()).unwrap()).unwrap();
    assert_eq!(
        lost(&doc, &back, String::new()).as_deref(),
        Some(".spec.ports[0].protocl")
    );
}
