//! The deploy/ manifests: typed Kubernetes objects with a least-privilege
//! posture (as files and as `kubectl kustomize` renders each variant), the
//! agent config they carry, the collector pipeline, and the Prometheus rules
//! and dashboard queries checked by a real `promtool`. That every query
//! returns data from a real agent is `tests/tests/prometheus.rs`.
//!
//! Needs `promtool` (Debian: `apt-get install -y prometheus`) and `kubectl`
//! (with kustomize v5; Debian's kubernetes-client 1.20 is too old for the
//! `labels` field); under CI=true a missing tool fails the test instead of
//! skipping it. No root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use tokenscope::export::metrics::Metrics;
use tokenscope::export::prometheus;
use tokenscope::record::CallRecord;

const KUSTOMIZATION: &str = include_str!("../../deploy/base/kustomization.yaml");
const BASE: [(&str, &str); 6] = [
    (
        "namespace.yaml",
        include_str!("../../deploy/base/namespace.yaml"),
    ),
    (
        "serviceaccount.yaml",
        include_str!("../../deploy/base/serviceaccount.yaml"),
    ),
    ("rbac.yaml", include_str!("../../deploy/base/rbac.yaml")),
    (
        "configmap.yaml",
        include_str!("../../deploy/base/configmap.yaml"),
    ),
    (
        "daemonset.yaml",
        include_str!("../../deploy/base/daemonset.yaml"),
    ),
    (
        "service.yaml",
        include_str!("../../deploy/base/service.yaml"),
    ),
];
const GPU_KUSTOMIZATION: &str = include_str!("../../deploy/overlays/gpu/kustomization.yaml");
const GPU_DAEMONSET_PATCH: &str = include_str!("../../deploy/overlays/gpu/daemonset-gpu.yaml");
const GPU_CONFIGMAP_PATCH: &str = include_str!("../../deploy/overlays/gpu/configmap-gpu.yaml");
const PLAIN_KUSTOMIZATION: &str = include_str!("../../deploy/overlays/plain/kustomization.yaml");
const PLAIN_DAEMONSET_PATCH: &str =
    include_str!("../../deploy/overlays/plain/daemonset-plain.yaml");
const COLLECTOR: &str = include_str!("../../deploy/otel-collector.yaml");
const RULES: &str = include_str!("../../deploy/prometheus/rules.yaml");
const RULES_TEST: &str = include_str!("../../deploy/prometheus/rules_test.yaml");
const DASHBOARD: &str = include_str!("../../deploy/grafana/tokenscope.json");
const CONTAINERFILE: &str = include_str!("../../deploy/Containerfile");
const RECORDS: &str = include_str!("../../tests/fixtures/export/records.jsonl");

const NAMESPACE: &str = "tokenscope";
const PORT: i32 = 9464;
/// Each one is needed: tests/tests/image.rs runs the image without each.
const CAPABILITIES: [&str; 5] = [
    "BPF",
    "PERFMON",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];
const HOST_MOUNTS: [(&str, &str); 4] = [
    ("/sys/kernel/btf", "/sys/kernel/btf"),
    ("/sys/kernel/tracing", "/sys/kernel/tracing"),
    ("/sys/fs/cgroup", "/sys/fs/cgroup"),
    ("/proc", "/host/proc"),
];
const CONFIG_SECTIONS: [&str; 6] = ["agent", "capture", "kubernetes", "export", "gpu", "pricing"];

/// Every YAML document of the base, as (kind, document).
fn base_documents() -> Vec<(String, serde_yaml::Value)> {
    let mut out = Vec::new();
    for (file, text) in BASE {
        for document in serde_yaml::Deserializer::from_str(text) {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_else(|| panic!("{file}: a document without kind"))
                .to_owned();
            out.push((kind, value));
        }
    }
    out
}

/// The one object of `kind`, parsed into its typed k8s-openapi struct.
///
/// k8s-openapi ignores unknown fields, so the typed object is written back and
/// compared with the document: a misspelt or misplaced field would vanish and
/// fail here instead of being silently dropped by the API server.
fn one<T: DeserializeOwned + serde::Serialize>(kind: &str) -> T {
    let documents: Vec<serde_yaml::Value> = base_documents()
        .into_iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(documents.len(), 1, "exactly one {kind}");
    let document = documents.into_iter().next().unwrap_or_default();
    assert_typed_round_trip::<T>(kind, &document);
    serde_yaml::from_value(document)
        .unwrap_or_else(|e| panic!("{kind} does not parse as the typed object: {e}"))
}

fn assert_typed_round_trip<T: DeserializeOwned + serde::Serialize>(
    what: &str,
    document: &serde_yaml::Value,
) {
    let typed: T = serde_yaml::from_value(document.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse as the typed object: {e}"));
    let written = serde_json::to_value(&typed).expect("typed object serialises");
    let original = serde_json::to_value(document).expect("YAML as JSON");
    assert_eq!(
        written, original,
        "{what}: fields the typed object does not know"
    );
}

fn pod_spec(daemonset: &DaemonSet) -> &PodSpec {
    daemonset.spec.template.spec.as_ref().expect("pod spec")
}

fn agent_container(spec: &PodSpec) -> &Container {
    assert_eq!(spec.containers.len(), 1, "one container");
    spec.containers.first().expect("container")
}

#[test]
fn kustomization_lists_every_base_manifest() {
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(KUSTOMIZATION).expect("kustomization");
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    let files: BTreeSet<&str> = BASE.iter().map(|(f, _)| *f).collect();
    assert_eq!(listed, files);
    assert_eq!(kustomization["namespace"].as_str(), Some(NAMESPACE));
    let kinds: BTreeSet<String> = base_documents().into_iter().map(|(k, _)| k).collect();
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Namespace",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(kinds, expected.iter().map(|k| k.to_string()).collect());
    let namespace: Namespace = one("Namespace");
    assert_eq!(namespace.metadata.name.as_deref(), Some(NAMESPACE));
}

#[test]
fn daemonset_has_the_least_privilege_posture() {
    let daemonset: DaemonSet = one("DaemonSet");
    let account: ServiceAccount = one("ServiceAccount");
    assert_eq!(
        pod_spec(&daemonset).service_account_name,
        account.metadata.name
    );
    assert_posture(&daemonset);
}

/// What every variant of the DaemonSet must hold.
fn assert_posture(daemonset: &DaemonSet) {
    let spec = pod_spec(daemonset);
    assert_eq!(
        spec.host_pid,
        Some(true),
        "hostPID to reach other containers' binaries"
    );
    assert_ne!(spec.host_network, Some(true));
    assert_ne!(spec.host_ipc, Some(true));

    let container = agent_container(spec);
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.privileged, Some(false), "never privileged");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = capabilities
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(
        added,
        CAPABILITIES.into_iter().collect(),
        "capabilities exactly as documented"
    );
    assert_eq!(
        capabilities.add.as_ref().map(Vec::len),
        Some(CAPABILITIES.len()),
        "no duplicates"
    );

    // Host paths: exactly the four, each mounted read-only.
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let host_paths: BTreeMap<&str, &str> = volumes
        .iter()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let mut seen = BTreeSet::new();
    for mount in mounts {
        if let Some(host) = host_paths.get(mount.name.as_str()) {
            assert_eq!(mount.read_only, Some(true), "{host} must be read-only");
            seen.insert((*host, mount.mount_path.as_str()));
        }
    }
    assert_eq!(seen, HOST_MOUNTS.into_iter().collect());
    assert_eq!(host_paths.len(), HOST_MOUNTS.len(), "no other host paths");

    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));

    let probe_target = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        (get.path.clone().unwrap_or_default(), get.port.clone())
    };
    assert_eq!(
        probe_target(container.readiness_probe.as_ref()),
        ("/readyz".to_owned(), IntOrString::Int(PORT))
    );
    assert_eq!(
        probe_target(container.liveness_probe.as_ref()),
        ("/healthz".to_owned(), IntOrString::Int(PORT))
    );
    let ports: Vec<i32> = container
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, vec![PORT]);

    let resources = container.resources.as_ref().expect("resources");
    let quantity =
        |map: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
         key: &str| { map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone()) };
    assert_eq!(
        quantity(&resources.requests, "cpu").as_deref(),
        Some("100m")
    );
    assert_eq!(
        quantity(&resources.requests, "memory").as_deref(),
        Some("192Mi")
    );
    assert_eq!(quantity(&resources.limits, "cpu").as_deref(), Some("500m"));
    assert_eq!(
        quantity(&resources.limits, "memory").as_deref(),
        Some("768Mi")
    );

    let tolerates_all =
        spec.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        });
    assert!(tolerates_all, "tolerates every taint");
}

#[test]
fn rbac_reads_only_what_attribution_needs() {
    let role: ClusterRole = one("ClusterRole");
    let mut granted: BTreeSet<(String, String)> = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(
            verbs,
            ["get", "list", "watch"].into_iter().collect(),
            "read-only verbs"
        );
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted.insert((group.clone(), resource.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("", "pods"),
        ("", "namespaces"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
    ]
    .into_iter()
    .map(|(g, r)| (g.to_owned(), r.to_owned()))
    .collect();
    assert_eq!(granted, expected);

    let binding: ClusterRoleBinding = one("ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        role.metadata.name.as_deref()
    );
    let account: ServiceAccount = one("ServiceAccount");
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    let subject = subjects.first().expect("subject");
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(
        Some(subject.name.as_str()),
        account.metadata.name.as_deref()
    );
    assert_eq!(subject.namespace.as_deref(), Some(NAMESPACE));
}

fn config_of(configmap: &ConfigMap) -> toml::Table {
    let text = configmap
        .data
        .as_ref()
        .and_then(|d| d.get("config.toml"))
        .expect("config.toml key");
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("config.toml is not TOML: {e}"));
    for section in CONFIG_SECTIONS {
        assert!(
            table.get(section).is_some_and(toml::Value::is_table),
            "[{section}] missing"
        );
    }
    // The agent's own loader accepts it: no unknown key, no bad value.
    tokenscope::config::Config::from_toml(text)
        .unwrap_or_else(|e| panic!("the agent rejects the ConfigMap's config: {e}"))
        .validate()
        .unwrap_or_else(|e| panic!("the agent rejects the ConfigMap's config: {e}"));
    table
}

#[test]
fn configmap_carries_a_toml_config_the_daemonset_mounts() {
    let configmap: ConfigMap = one("ConfigMap");
    let config = config_of(&configmap);
    let export = &config["export"];
    assert_eq!(export["listen"].as_str(), Some("0.0.0.0:9464"));
    assert_eq!(export["otlp_protocol"].as_str(), Some("grpc"));
    assert!(export["otlp_endpoint"]
        .as_str()
        .is_some_and(|e| e.starts_with("http://")));
    let events = export["events_path"].as_str().expect("events_path");
    assert_eq!(config["kubernetes"]["enabled"].as_bool(), Some(true));
    assert!(config["gpu"]["source"].is_str());
    assert!(config["gpu"]["usd_per_gpu_hour"].is_float());

    let daemonset: DaemonSet = one("DaemonSet");
    let spec = pod_spec(&daemonset);
    let container = agent_container(spec);
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.config_map.as_ref().map(|c| c.name.as_str()) == configmap.metadata.name.as_deref()
        })
        .expect("a volume from the ConfigMap");
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let config_mount = mounts
        .iter()
        .find(|m| m.name == volume.name)
        .expect("config mounted");
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(
        args,
        vec![
            "run".to_owned(),
            "--config".to_owned(),
            format!("{}/config.toml", config_mount.mount_path)
        ],
        "`tokenscope run` with the mounted config"
    );
    // The read-only root leaves the events log only a writable volume.
    let writable = mounts
        .iter()
        .filter(|m| m.read_only != Some(true))
        .any(|m| Path::new(events).starts_with(&m.mount_path));
    assert!(writable, "events_path {events} is on a writable mount");
}

#[test]
fn service_exposes_the_metrics_port_of_the_agent_pods() {
    let service: Service = one("Service");
    let daemonset: DaemonSet = one("DaemonSet");
    let spec = service.spec.expect("service spec");
    let pod_labels = daemonset
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec.selector.unwrap_or_default();
    assert!(!selector.is_empty());
    assert!(
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "selector matches the agent pods"
    );
    let port = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .next()
        .expect("a port");
    assert_eq!(port.port, PORT);
    let named = agent_container(pod_spec(&daemonset))
        .ports
        .iter()
        .flatten()
        .find(|p| {
            Some(IntOrString::String(p.name.clone().unwrap_or_default())) == port.target_port
        });
    assert_eq!(named.map(|p| p.container_port), Some(PORT));
}

#[test]
fn gpu_overlay_targets_gpu_nodes_with_nvml() {
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(GPU_KUSTOMIZATION).expect("overlay kustomization");
    let resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(resources, vec!["../../base"]);
    let patches: BTreeSet<&str> = kustomization["patches"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert_eq!(
        patches,
        ["configmap-gpu.yaml", "daemonset-gpu.yaml"]
            .into_iter()
            .collect()
    );

    // The patch is partial, so it is checked as YAML against the typed pod spec fields.
    let patch: serde_yaml::Value =
        serde_yaml::from_str(GPU_DAEMONSET_PATCH).expect("daemonset patch");
    let pod = &patch["spec"]["template"]["spec"];
    assert_typed_round_trip::<PodSpec>("gpu overlay pod spec", pod);
    let pod_spec: PodSpec =
        serde_yaml::from_value(pod.clone()).expect("patch pod spec parses as PodSpec");
    assert_eq!(pod_spec.runtime_class_name.as_deref(), Some("nvidia"));
    assert!(pod_spec
        .node_selector
        .as_ref()
        .is_some_and(|s| !s.is_empty()));
    assert!(pod_spec
        .tolerations
        .iter()
        .flatten()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));
    let container = pod_spec.containers.first().expect("agent container patch");
    assert_eq!(container.name, "agent");
    let visible = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NVIDIA_VISIBLE_DEVICES");
    assert_eq!(visible.and_then(|e| e.value.as_deref()), Some("all"));

    let configmap: ConfigMap = serde_yaml::from_str(GPU_CONFIGMAP_PATCH).expect("configmap patch");
    let base: ConfigMap = one("ConfigMap");
    assert_eq!(
        configmap.metadata.name, base.metadata.name,
        "patches the base ConfigMap"
    );
    let config = config_of(&configmap);
    assert_eq!(config["gpu"]["source"].as_str(), Some("nvml"));
    assert!(config["gpu"]["usd_per_gpu_hour"]
        .as_float()
        .is_some_and(|p| p > 0.0));
    let base_config = config_of(&base);
    assert_eq!(
        config["export"], base_config["export"],
        "only [gpu] differs from base"
    );
    assert_eq!(config["kubernetes"], base_config["kubernetes"]);
}

#[test]
fn collector_pipelines_reference_defined_components() {
    let config: serde_yaml::Value = serde_yaml::from_str(COLLECTOR).expect("otel-collector.yaml");
    let pipelines = config["service"]["pipelines"]
        .as_mapping()
        .expect("pipelines");
    assert!(pipelines.contains_key("metrics") && pipelines.contains_key("traces"));
    let mut used: BTreeSet<(&str, String)> = BTreeSet::new();
    let mut exporters_used = BTreeSet::new();
    for (name, pipeline) in pipelines {
        for section in ["receivers", "processors", "exporters"] {
            let components = pipeline[section]
                .as_sequence()
                .unwrap_or_else(|| panic!("{name:?} has no {section} list"));
            assert!(
                section == "processors" || !components.is_empty(),
                "{name:?} has no {section}"
            );
            for component in components {
                let component = component.as_str().expect("component name");
                assert!(
                    config[section].get(component).is_some(),
                    "{name:?} uses undefined {section} {component}"
                );
                used.insert((section, component.to_owned()));
                if section == "exporters" {
                    exporters_used.insert(component.to_owned());
                }
            }
        }
        let processors: Vec<&str> = pipeline["processors"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .collect();
        assert_eq!(
            processors.first(),
            Some(&"memory_limiter"),
            "memory_limiter runs first"
        );
        assert_eq!(processors.last(), Some(&"batch"), "batch runs last");
        assert_eq!(pipeline["receivers"][0].as_str(), Some("otlp"));
    }
    for exporter in ["prometheusremotewrite", "otlphttp", "debug"] {
        assert!(exporters_used.contains(exporter), "{exporter} is used");
    }
    // Every defined component is in some pipeline: a collector refuses none,
    // but one defined and unused is a configuration mistake.
    for section in ["receivers", "processors", "exporters", "connectors"] {
        for (component, _) in config[section].as_mapping().into_iter().flatten() {
            let component = component.as_str().expect("component name");
            assert!(
                used.contains(&(section, component.to_owned())),
                "{section} {component} is defined but in no pipeline"
            );
        }
    }
    assert!(
        config["extensions"].is_null()
            || config["extensions"]
                .as_mapping()
                .into_iter()
                .flatten()
                .all(|(name, _)| config["service"]["extensions"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|e| e == name)),
        "every extension is enabled under service.extensions"
    );
    let grpc = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .unwrap_or_default();
    let configmap: ConfigMap = one("ConfigMap");
    let endpoint = config_of(&configmap)["export"]["otlp_endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let port = grpc.rsplit(':').next().unwrap_or_default();
    assert!(
        endpoint.ends_with(&format!(":{port}")),
        "agent sends to the collector's gRPC port {port}"
    );
}

#[test]
fn containerfile_builds_offline_from_a_glibc_base_argument() {
    let lines: Vec<&str> = CONTAINERFILE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        lines.first(),
        Some(&"ARG BASE=debian:bookworm-slim"),
        "BASE defaults to a glibc image"
    );
    assert!(lines.contains(&"FROM ${BASE}"));
    assert!(lines.contains(&"COPY tokenscope /usr/local/bin/tokenscope"));
    assert!(lines.contains(&"ENTRYPOINT [\"/usr/local/bin/tokenscope\"]"));
    assert!(lines.contains(&format!("EXPOSE {PORT}").as_str()));
    assert!(lines.contains(&"CMD [\"run\", \"--config\", \"/etc/tokenscope/config.toml\"]"));
    // No RUN step: nothing executes at build time, so nothing is downloaded.
    assert!(
        lines.iter().all(|l| !l.starts_with("RUN")),
        "a RUN step in {lines:?}"
    );
}

/// `kubectl kustomize deploy/<dir>` as YAML documents, or None outside CI
/// when kubectl is missing.
fn kustomize(dir: &str) -> Option<Vec<serde_yaml::Value>> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let output = match Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy.join(dir))
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!ci, "kubectl is missing ({e}); required under CI=true");
            eprintln!("SKIP: kubectl not installed");
            return None;
        }
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let documents = serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            <serde_yaml::Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("kustomize {dir}: not YAML: {e}"))
        })
        .collect();
    Some(documents)
}

fn kind_of(document: &serde_yaml::Value) -> &str {
    document["kind"].as_str().unwrap_or_default()
}

fn name_of(document: &serde_yaml::Value) -> &str {
    document["metadata"]["name"].as_str().unwrap_or_default()
}

/// The one rendered object of `kind`, typed, with no field the type drops.
fn rendered<T: DeserializeOwned + serde::Serialize>(
    documents: &[serde_yaml::Value],
    kind: &str,
) -> T {
    let matching: Vec<&serde_yaml::Value> =
        documents.iter().filter(|d| kind_of(d) == kind).collect();
    assert_eq!(matching.len(), 1, "exactly one rendered {kind}");
    let document = matching.first().copied().cloned().unwrap_or_default();
    assert_typed_round_trip::<T>(kind, &document);
    serde_yaml::from_value(document).expect("typed")
}

/// Base and both overlays, as `kubectl kustomize` renders them: every object
/// parses into its typed k8s-openapi struct, every DaemonSet keeps the
/// posture, and plain + gpu can be applied side by side.
#[test]
fn every_variant_renders_into_typed_objects_with_the_posture() {
    let Some(base) = kustomize("base") else {
        return;
    };
    let (Some(plain), Some(gpu)) = (kustomize("overlays/plain"), kustomize("overlays/gpu")) else {
        return;
    };
    let mut variants = BTreeMap::new();
    for (variant, documents) in [("base", &base), ("plain", &plain), ("gpu", &gpu)] {
        let kinds: BTreeSet<&str> = documents.iter().map(kind_of).collect();
        assert_eq!(
            kinds,
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet",
                "Namespace",
                "Service",
                "ServiceAccount"
            ]
            .into_iter()
            .collect(),
            "{variant}"
        );
        let _: Namespace = rendered(documents, "Namespace");
        let _: ClusterRole = rendered(documents, "ClusterRole");
        let binding: ClusterRoleBinding = rendered(documents, "ClusterRoleBinding");
        let account: ServiceAccount = rendered(documents, "ServiceAccount");
        let service: Service = rendered(documents, "Service");
        let configmap: ConfigMap = rendered(documents, "ConfigMap");
        let daemonset: DaemonSet = rendered(documents, "DaemonSet");
        assert_posture(&daemonset);
        let spec = pod_spec(&daemonset);
        assert_eq!(spec.service_account_name, account.metadata.name);
        assert_eq!(
            binding
                .subjects
                .unwrap_or_default()
                .first()
                .map(|s| s.name.clone()),
            account.metadata.name,
            "{variant}: the binding names the agent's account"
        );
        let mounted = spec
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.config_map.as_ref().map(|c| c.name.clone()));
        assert_eq!(
            mounted, configmap.metadata.name,
            "{variant}: config mounted"
        );
        let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
        assert_eq!(
            Some(&selector),
            daemonset.spec.selector.match_labels.as_ref(),
            "{variant}: the Service selects exactly this DaemonSet's pods"
        );
        variants.insert(variant, (spec.clone(), config_of(&configmap), selector));
    }

    let (plain_pod, plain_config, plain_selector) = &variants["plain"];
    let (gpu_pod, gpu_config, gpu_selector) = &variants["gpu"];
    assert_eq!(gpu_pod.runtime_class_name.as_deref(), Some("nvidia"));
    assert_eq!(gpu_config["gpu"]["source"].as_str(), Some("nvml"));
    assert_eq!(plain_pod.runtime_class_name, None);
    assert_eq!(plain_config["gpu"]["source"].as_str(), Some("none"));
    let avoids_gpu_nodes = plain_pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|r| {
            r.node_selector_terms.iter().all(|t| {
                t.match_expressions.iter().flatten().any(|e| {
                    e.key == "nvidia.com/gpu.present"
                        && e.operator == "NotIn"
                        && e.values.as_deref() == Some(&["true".to_owned()][..])
                })
            })
        });
    assert!(avoids_gpu_nodes, "plain stays off GPU nodes");
    assert_eq!(
        gpu_pod
            .node_selector
            .as_ref()
            .and_then(|s| s.get("nvidia.com/gpu.present"))
            .map(String::as_str),
        Some("true"),
        "gpu runs on GPU nodes only"
    );
    // Side by side: only the Namespace is shared, and neither DaemonSet nor
    // Service selects the other's pods.
    let names = |documents: &[serde_yaml::Value]| -> BTreeSet<(String, String)> {
        documents
            .iter()
            .filter(|d| kind_of(d) != "Namespace")
            .map(|d| (kind_of(d).to_owned(), name_of(d).to_owned()))
            .collect()
    };
    assert!(names(&plain).is_disjoint(&names(&gpu)));
    let overlap = plain_selector
        .iter()
        .all(|(k, v)| gpu_selector.get(k).is_none_or(|g| g == v));
    assert!(
        !overlap,
        "selectors {plain_selector:?} and {gpu_selector:?} overlap"
    );
}

#[test]
fn plain_overlay_patches_the_base_daemonset() {
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(PLAIN_KUSTOMIZATION).expect("overlay kustomization");
    let resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(resources, vec!["../../base"]);
    let patch: serde_yaml::Value =
        serde_yaml::from_str(PLAIN_DAEMONSET_PATCH).expect("daemonset patch");
    assert_typed_round_trip::<PodSpec>("plain overlay pod spec", &{
        let mut pod = patch["spec"]["template"]["spec"].clone();
        // PodSpec requires containers; the patch leaves them to the base.
        pod["containers"] = serde_yaml::Value::Sequence(Vec::new());
        pod
    });
}

/// `promtool`, or None outside CI when it is not installed.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("promtool"))
        .find(|path| path.is_file());
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "promtool is missing: apt-get install -y prometheus (required under CI=true)"
        );
        eprintln!("SKIP: promtool not installed (apt-get install -y prometheus)");
    }
    found
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tokenscope-deploy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_promtool(promtool: &Path, args: &[&str], dir: &Path, stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("promtool stdin");
    }
    let output = child.wait_with_output().expect("promtool output");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = TempDir::new("rules");
    dir.write("rules.yaml", RULES);
    dir.write("rules_test.yaml", RULES_TEST);
    run_promtool(&promtool, &["check", "rules", "rules.yaml"], &dir.0, None);
    run_promtool(
        &promtool,
        &["test", "rules", "rules_test.yaml"],
        &dir.0,
        None,
    );
}

/// The agent's exposition of the fixture records, through the real exporter code.
fn rendered_metrics() -> String {
    let metrics = Metrics::default();
    for line in RECORDS.lines() {
        let record: CallRecord = serde_json::from_str(line).expect("fixture record");
        metrics.record(&record);
    }
    // As the daemon publishes the kernel-side counters.
    for (counter, value) in [("ringbuf_full", 3), ("read_failed", 0), ("ssl_calls", 120)] {
        metrics.set_agent_counter(
            "tokenscope_capture_kernel_total",
            &[("counter", counter)],
            value,
        );
    }
    prometheus::render(&metrics.snapshot())
}

#[test]
fn agent_exposition_passes_promtool_lint() {
    let Some(promtool) = promtool() else { return };
    let dir = TempDir::new("lint");
    run_promtool(
        &promtool,
        &["check", "metrics"],
        &dir.0,
        Some(&rendered_metrics()),
    );
}

/// Every dashboard query, evaluated by promtool over series the agent really
/// exports (each sample growing linearly for 30 minutes), must return at
/// least one non-negative sample. A typo in a metric or label name, a bad
/// expression, or a panel that can never show data fails here.
#[test]
fn dashboard_queries_return_data_over_the_agent_series() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("target expr");
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            queries.push((title, expr.to_owned()));
        }
    }
    // The panels the deploy issue asks for, by the words of their titles.
    for required in [
        &["cost", "team"][..],
        &["cost", "model"],
        &["tokens", "model"],
        &["first token", "p95", "model"],
        &["duration", "p95", "model"],
        &["429"],
        &["gpu", "busy", "held", "pod"],
        &["self-hosted", "1m tokens"],
        &["capture drops"],
    ] {
        assert!(
            queries.iter().any(|(title, _)| {
                let title = title.to_lowercase();
                required.iter().all(|word| title.contains(word))
            }),
            "no panel about {required:?}"
        );
    }
    let Some(promtool) = promtool() else { return };

    // Grafana's variables, as the dashboard's "All" selection and a 30m range would set them.
    let substitute = |expr: &str| {
        expr.replace("$__rate_interval", "5m")
            .replace("$__range", "30m")
            .replace("$team", ".*")
    };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut alerts = String::new();
    for (index, (title, expr)) in queries.iter().enumerate() {
        // GPU series come from NVML samples, not from call records; the real
        // Prometheus test (tests/tests/prometheus.rs) checks those panels
        // against an agent replaying GPU samples.
        if expr.contains("gpu") {
            continue;
        }
        let expr = substitute(expr);
        assert!(
            !expr.contains('$'),
            "unsubstituted variable in {title}: {expr}"
        );
        rules.push_str(&format!(
            "      - alert: Panel{index}HasNoData\n        expr: {:?}\n",
            format!("absent(({expr}) >= 0)")
        ));
        alerts.push_str(&format!("      - alertname: Panel{index}HasNoData\n        eval_time: 30m\n        exp_alerts: []\n"));
    }
    let mut series = String::new();
    for line in rendered_metrics().lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("sample line");
        series.push_str(&format!(
            "      - series: {:?}\n        values: '0+{value}x30'\n",
            name
        ));
    }
    let test = format!(
        "rule_files:\n  - dashboard_rules.yaml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n{alerts}"
    );
    let dir = TempDir::new("dashboard");
    dir.write("dashboard_rules.yaml", &rules);
    dir.write("dashboard_test.yaml", &test);
    run_promtool(
        &promtool,
        &["check", "rules", "dashboard_rules.yaml"],
        &dir.0,
        None,
    );
    run_promtool(
        &promtool,
        &["test", "rules", "dashboard_test.yaml"],
        &dir.0,
        None,
    );
}
