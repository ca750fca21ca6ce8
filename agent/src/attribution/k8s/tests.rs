use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::List;

use super::*;

const PODS: &str = include_str!("../../../../tests/fixtures/k8s/pods.json");
const NAMESPACES: &str = include_str!("../../../../tests/fixtures/k8s/namespaces.json");
const REPLICASETS: &str = include_str!("../../../../tests/fixtures/k8s/replicasets.json");
const JOBS: &str = include_str!("../../../../tests/fixtures/k8s/jobs.json");

fn pods() -> Vec<Pod> {
    let list: List<Pod> = serde_json::from_str(PODS).unwrap();
    list.items
}

fn pod(name: &str) -> Pod {
    pods()
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no pod {name} in pods.json"))
}

fn owners() -> OwnerIndex {
    let mut index = OwnerIndex::default();
    let rs: List<ReplicaSet> = serde_json::from_str(REPLICASETS).unwrap();
    for r in &rs.items {
        assert!(index.insert("ReplicaSet", &r.metadata));
    }
    let jobs: List<Job> = serde_json::from_str(JOBS).unwrap();
    for j in &jobs.items {
        assert!(index.insert("Job", &j.metadata));
    }
    index
}

fn ns_meta(name: &str) -> NamespaceMeta {
    let list: List<Namespace> = serde_json::from_str(NAMESPACES).unwrap();
    let ns = list
        .items
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no namespace {name}"));
    NamespaceMeta::from_meta(&ns.metadata, &TeamKeys::new("team"))
}

fn meta(name: &str, owners: &OwnerIndex) -> PodMeta {
    let p = pod(name);
    let ns = ns_meta(p.metadata.namespace.as_deref().unwrap());
    pod_meta(&p, owners, Some(&ns), &TeamKeys::new("team")).unwrap()
}

fn workload(m: &PodMeta) -> (&str, &str) {
    (m.workload_kind.as_str(), m.workload.as_str())
}

#[test]
fn deployment_pod_resolves_through_its_replicaset() {
    let m = meta("chat-api-7d9f8b6c5d-x2k4p", &owners());
    assert_eq!(workload(&m), ("Deployment", "chat-api"));
    assert_eq!(m.namespace, "inference");
    assert_eq!(m.uid, "3f1e2d4c-8b7a-4c5d-9e6f-0a1b2c3d4e5f");
    assert_eq!(m.ip.as_deref(), Some("10.244.1.17"));
    assert_eq!(m.labels.get("app").map(String::as_str), Some("chat-api"));
    // No team label on the pod: the namespace's.
    assert_eq!(m.team.as_deref(), Some("ml-platform"));
}

#[test]
fn deployment_is_named_from_the_template_hash_before_the_replicaset_is_known() {
    let m = meta("chat-api-7d9f8b6c5d-x2k4p", &OwnerIndex::default());
    assert_eq!(workload(&m), ("Deployment", "chat-api"));
}

#[test]
fn replicaset_without_controller_is_the_workload() {
    let m = meta("legacy-worker-7xq2r", &owners());
    assert_eq!(workload(&m), ("ReplicaSet", "legacy-worker"));
    // Neither pod nor namespace `default` has a team: the namespace name is the team.
    assert_eq!(m.team.as_deref(), Some("default"));
}

#[test]
fn cronjob_pod_resolves_through_its_job() {
    let m = meta("embed-nightly-29412360-q8z7m", &owners());
    assert_eq!(workload(&m), ("CronJob", "embed-nightly"));
    // The pod's label wins over the namespace's (`research-lab`).
    assert_eq!(m.team.as_deref(), Some("nlp"));
    // Unknown Job: the Job itself.
    let m = meta("embed-nightly-29412360-q8z7m", &OwnerIndex::default());
    assert_eq!(workload(&m), ("Job", "embed-nightly-29412360"));
}

#[test]
fn plain_job_pod_is_its_job_and_takes_the_namespace_team() {
    let m = meta("migrate-db-kx8vb", &owners());
    assert_eq!(workload(&m), ("Job", "migrate-db"));
    assert_eq!(m.team.as_deref(), Some("research-lab"));
}

#[test]
fn statefulset_daemonset_and_bare_pods() {
    let index = owners();
    let m = meta("vllm-0", &index);
    assert_eq!(workload(&m), ("StatefulSet", "vllm"));
    assert_eq!(m.team.as_deref(), Some("serving"));
    let m = meta("node-exporter-5xk2d", &index);
    assert_eq!(workload(&m), ("DaemonSet", "node-exporter"));
    assert_eq!(m.team.as_deref(), Some("monitoring"));
    let m = meta("debug-shell", &index);
    assert_eq!(workload(&m), ("Pod", "debug-shell"));
}

#[test]
fn team_label_name_is_configurable_and_missing_namespace_labels_are_fine() {
    let p = pod("vllm-0");
    let team = TeamKeys::new("team");
    let cost_center = TeamKeys::new("cost-center");
    let m = pod_meta(&p, &owners(), None, &team).unwrap();
    assert_eq!(m.team.as_deref(), Some("serving"));
    let m = pod_meta(&p, &owners(), None, &cost_center).unwrap();
    assert_eq!(m.team.as_deref(), Some("inference"), "the namespace name");
    let mut ns = NamespaceMeta::default();
    ns.labels
        .insert("cost-center".to_string(), "cc-42".to_string());
    let m = pod_meta(&p, &owners(), Some(&ns), &cost_center).unwrap();
    assert_eq!(m.team.as_deref(), Some("cc-42"));
}

#[test]
fn team_annotations_come_after_labels_on_the_pod_then_the_namespace() {
    let keys = TeamKeys {
        label: "team".to_string(),
        annotation: Some("example.com/team".to_string()),
    };
    let mut p = pod("chat-api-7d9f8b6c5d-x2k4p");
    let ns = ns_meta("inference");
    let annotate = |p: &mut Pod, value: &str| {
        p.metadata.annotations = Some(BTreeMap::from([
            ("example.com/team".to_string(), value.to_string()),
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                "{}".to_string(),
            ),
        ]));
    };
    annotate(&mut p, "search");
    // The pod's annotation wins over the namespace's label.
    let m = pod_meta(&p, &owners(), Some(&ns), &keys).unwrap();
    assert_eq!(m.team.as_deref(), Some("search"));
    // ... and the pod's label over its annotation.
    p.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert("team".to_string(), "payments".to_string());
    let m = pod_meta(&p, &owners(), Some(&ns), &keys).unwrap();
    assert_eq!(m.team.as_deref(), Some("payments"));
    // A namespace annotation, when neither the pod nor the namespace has a label.
    let mut bare = pod("debug-shell");
    let mut default_ns = ns_meta("default");
    default_ns
        .annotations
        .insert("example.com/team".to_string(), "sre".to_string());
    let m = pod_meta(&bare, &owners(), Some(&default_ns), &keys).unwrap();
    assert_eq!(m.team.as_deref(), Some("sre"));
    // The cache keeps only the team annotation of a pod.
    annotate(&mut bare, "oncall");
    let cache = PodCache::with_keys(keys);
    cache.apply_pod(bare);
    let stored = cache.read().pods.values().next().cloned().unwrap();
    assert_eq!(stored.metadata.annotations.unwrap().len(), 1);
    let m = cache
        .by_uid("4d5e6f7a-8b9c-4d0e-9f1a-2b3c4d5e6f7a")
        .unwrap();
    assert_eq!(m.team.as_deref(), Some("oncall"));
}

#[test]
fn container_names_by_runtime_id() {
    let cache = PodCache::new("team");
    for p in pods() {
        cache.apply_pod(p);
    }
    let m = cache
        .by_uid("3f1e2d4c-8b7a-4c5d-9e6f-0a1b2c3d4e5f")
        .unwrap();
    assert_eq!(
        m.container_name("3f1e2d4c8b7a4c5d9e6f0a1b2c3d4e5f3f1e2d4c8b7a4c5d9e6f0a1b2c3d4e5f"),
        Some("chat")
    );
    assert_eq!(m.container_name("3f1e2d4c"), None);
}

#[test]
fn pod_without_uid_is_refused() {
    let mut p = pod("debug-shell");
    p.metadata.uid = None;
    assert_eq!(pod_meta(&p, &owners(), None, &TeamKeys::new("team")), None);
}

#[test]
fn cache_indexes_ips_of_running_pod_network_pods_only() {
    let cache = PodCache::new("team");
    for p in pods() {
        cache.apply_pod(p);
    }
    assert_eq!(cache.len(), 8);
    let m = cache.by_ip("10.244.1.31").unwrap();
    assert_eq!(m.name, "vllm-0");
    // Host network: the node's IP names no single pod.
    assert_eq!(cache.by_ip("192.168.10.11"), None);
    assert!(cache
        .by_uid("2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e")
        .is_some());
    // A finished pod's IP may belong to the next pod.
    assert_eq!(cache.by_ip("10.244.1.45"), None);
    // A new pod that takes an IP owns it; the old pod's later removal keeps it.
    let mut reused = pod("debug-shell");
    reused.metadata.uid = Some("11111111-2222-4333-8444-555555555555".to_string());
    reused.metadata.name = Some("debug-shell-2".to_string());
    cache.apply_pod(reused);
    cache
        .write()
        .remove_pod("4d5e6f7a-8b9c-4d0e-9f1a-2b3c4d5e6f7a");
    assert_eq!(cache.by_ip("10.244.1.40").unwrap().name, "debug-shell-2");
}
