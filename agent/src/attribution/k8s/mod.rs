//! Kubernetes metadata for attribution: pod UID or pod IP → namespace, name,
//! labels, workload and team. `pod_meta` is pure; `watch` keeps the cache
//! current from the API server.

mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub use watch::{start, start_with};

/// Pods kept; kubelet's own limit is 110 by default and rarely above 500.
pub const MAX_PODS: usize = 4_096;
/// ReplicaSets and Jobs kept (cluster-wide, metadata only: ~200 bytes each).
pub const MAX_OWNERS: usize = 200_000;
/// Namespaces kept.
pub const MAX_NAMESPACES: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error(
        "the node name is empty; set it (usually from the downward API) to watch this node's pods"
    )]
    NoNodeName,
}

/// What attribution needs to know about one pod.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    /// Deployment, CronJob, StatefulSet, ... name; the pod name for a bare pod.
    pub workload: String,
    /// `Deployment`, `CronJob`, `Job`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Pod`, ...
    pub workload_kind: String,
    /// From the pod's team label or annotation, else its namespace's, else the namespace name.
    pub team: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// (container ID without its `containerd://` prefix, container name), init and ephemeral containers included.
    pub containers: Vec<(String, String)>,
}

impl PodMeta {
    /// The name of the container with this runtime ID.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(id, _)| id == container_id)
            .map(|(_, name)| name.as_str())
    }
}

/// Where the team is read: this label, then this annotation, on the pod and
/// then on its namespace; the namespace name last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamKeys {
    pub label: String,
    /// None: annotations are not read.
    pub annotation: Option<String>,
}

impl TeamKeys {
    /// The same key as label and annotation (the default: `team`).
    pub fn new(key: &str) -> TeamKeys {
        TeamKeys {
            label: key.to_string(),
            annotation: Some(key.to_string()),
        }
    }

    /// From `kubernetes.team_label` and `kubernetes.team_annotation` (empty: none).
    pub fn from_config(config: &crate::config::KubernetesConfig) -> TeamKeys {
        TeamKeys {
            label: config.team_label.clone(),
            annotation: Some(config.team_annotation.clone()).filter(|a| !a.trim().is_empty()),
        }
    }

    fn find(&self, meta: &ObjectMeta) -> Option<String> {
        let get = |map: &Option<BTreeMap<String, String>>, key: &str| {
            map.as_ref()
                .and_then(|m| m.get(key))
                .filter(|t| !t.trim().is_empty())
                .cloned()
        };
        get(&meta.labels, &self.label).or_else(|| {
            self.annotation
                .as_deref()
                .and_then(|key| get(&meta.annotations, key))
        })
    }
}

/// A namespace as attribution keeps it: labels and the team annotation only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceMeta {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl NamespaceMeta {
    fn from_meta(meta: &ObjectMeta, keys: &TeamKeys) -> NamespaceMeta {
        NamespaceMeta {
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: kept_annotations(meta, keys),
        }
    }

    fn team(&self, keys: &TeamKeys) -> Option<String> {
        keys.find(&ObjectMeta {
            labels: Some(self.labels.clone()),
            annotations: Some(self.annotations.clone()),
            ..ObjectMeta::default()
        })
    }
}

/// The team annotation alone: other annotations can be large (last-applied configs).
fn kept_annotations(meta: &ObjectMeta, keys: &TeamKeys) -> BTreeMap<String, String> {
    let Some(key) = keys.annotation.as_deref() else {
        return BTreeMap::new();
    };
    meta.annotations
        .as_ref()
        .and_then(|a| a.get_key_value(key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .into_iter()
        .collect()
}

/// The controller of a ReplicaSet or Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// Finds who controls an intermediate owner (a ReplicaSet or a Job).
pub trait OwnerLookup {
    /// The controller of `kind`/`name` in `namespace`; None when the object is
    /// unknown or has no controller.
    fn owner_of(&self, kind: &str, namespace: &str, name: &str) -> Option<Owner>;
}

/// ReplicaSets and Jobs by (namespace, name), each with its controller.
#[derive(Clone, Debug, Default)]
pub struct OwnerIndex {
    replicasets: HashMap<(String, String), Option<Owner>>,
    jobs: HashMap<(String, String), Option<Owner>>,
}

impl OwnerIndex {
    /// Records a ReplicaSet or Job from its metadata. Returns false when the
    /// kind is not one the index keeps, the metadata lacks a name, or the index
    /// is full.
    pub fn insert(&mut self, kind: &str, meta: &ObjectMeta) -> bool {
        let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
            return false;
        };
        let owner = controller_of(meta).map(|r| Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
        });
        let Some(map) = self.map_mut(kind) else {
            return false;
        };
        let key = (namespace.clone(), name.clone());
        if map.len() >= MAX_OWNERS && !map.contains_key(&key) {
            return false;
        }
        map.insert(key, owner);
        true
    }

    pub fn remove(&mut self, kind: &str, namespace: &str, name: &str) {
        if let Some(map) = self.map_mut(kind) {
            map.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    /// Keeps only the entries of `kind` whose (namespace, name) `keep` accepts.
    pub fn retain(&mut self, kind: &str, mut keep: impl FnMut(&str, &str) -> bool) {
        if let Some(map) = self.map_mut(kind) {
            map.retain(|(ns, name), _| keep(ns, name));
        }
    }

    pub fn len(&self) -> usize {
        self.replicasets.len() + self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn map_mut(&mut self, kind: &str) -> Option<&mut HashMap<(String, String), Option<Owner>>> {
        match kind {
            "ReplicaSet" => Some(&mut self.replicasets),
            "Job" => Some(&mut self.jobs),
            _ => None,
        }
    }
}

impl OwnerLookup for OwnerIndex {
    fn owner_of(&self, kind: &str, namespace: &str, name: &str) -> Option<Owner> {
        let map = match kind {
            "ReplicaSet" => &self.replicasets,
            "Job" => &self.jobs,
            _ => return None,
        };
        map.get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .flatten()
    }
}

/// The owner reference marked as controller, else the first one.
fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

/// Builds the pod's metadata. None when the pod lacks a name, namespace or UID.
pub fn pod_meta(
    pod: &Pod,
    owners: &impl OwnerLookup,
    ns: Option<&NamespaceMeta>,
    keys: &TeamKeys,
) -> Option<PodMeta> {
    let meta = &pod.metadata;
    let name = meta.name.clone()?;
    let namespace = meta.namespace.clone()?;
    let uid = meta.uid.clone()?;
    let labels = meta.labels.clone().unwrap_or_default();
    let (workload_kind, workload) = workload_of(meta, &namespace, &name, &labels, owners);
    let team = keys
        .find(meta)
        .or_else(|| ns.and_then(|ns| ns.team(keys)))
        .or_else(|| Some(namespace.clone()));
    let containers = pod
        .status
        .iter()
        .flat_map(|s| {
            [
                &s.container_statuses,
                &s.init_container_statuses,
                &s.ephemeral_container_statuses,
            ]
        })
        .flatten()
        .flatten()
        .filter_map(|c| {
            let id = c.container_id.as_deref()?;
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            Some((id.to_string(), c.name.clone()))
        })
        .collect();
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty());
    Some(PodMeta {
        namespace,
        name,
        uid,
        ip,
        workload,
        workload_kind,
        team,
        labels,
        containers,
    })
}

/// Follows Pod → ReplicaSet → Deployment and Pod → Job → CronJob.
fn workload_of(
    meta: &ObjectMeta,
    namespace: &str,
    pod_name: &str,
    labels: &BTreeMap<String, String>,
    owners: &impl OwnerLookup,
) -> (String, String) {
    let Some(owner) = controller_of(meta) else {
        return ("Pod".to_string(), pod_name.to_string());
    };
    match owner.kind.as_str() {
        "ReplicaSet" | "Job" => {
            if let Some(up) = owners.owner_of(&owner.kind, namespace, &owner.name) {
                return (up.kind, up.name);
            }
            // The Deployment controller names its ReplicaSets `<deployment>-<pod-template-hash>`
            // and labels their pods with that hash, so the Deployment is known even before the
            // ReplicaSet is.
            let deployment = labels
                .get("pod-template-hash")
                .filter(|_| owner.kind == "ReplicaSet")
                .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
                .and_then(|rest| rest.strip_suffix('-'))
                .filter(|d| !d.is_empty());
            match deployment {
                Some(d) => ("Deployment".to_string(), d.to_string()),
                None => (owner.kind.clone(), owner.name.clone()),
            }
        }
        _ => (owner.kind.clone(), owner.name.clone()),
    }
}

/// The parts of a pod that `pod_meta` and the IP index read; the rest is
/// dropped so the cache stays small.
fn slim(pod: Pod, keys: &TeamKeys) -> Pod {
    let annotations = kept_annotations(&pod.metadata, keys);
    let meta = pod.metadata;
    let containers = |statuses: Option<Vec<ContainerStatus>>| {
        statuses.map(|list| {
            list.into_iter()
                .map(|c| ContainerStatus {
                    name: c.name,
                    container_id: c.container_id,
                    ..ContainerStatus::default()
                })
                .collect()
        })
    };
    Pod {
        metadata: ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            labels: meta.labels,
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            owner_references: meta.owner_references,
            ..ObjectMeta::default()
        },
        spec: pod.spec.map(|s| PodSpec {
            host_network: s.host_network,
            ..PodSpec::default()
        }),
        status: pod.status.map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            container_statuses: containers(s.container_statuses),
            init_container_statuses: containers(s.init_container_statuses),
            ephemeral_container_statuses: containers(s.ephemeral_container_statuses),
            ..PodStatus::default()
        }),
    }
}

/// IPs that identify this pod alone: none for host-network pods (they share
/// the node's) or finished pods (their IP may already belong to a new pod).
fn own_ips(pod: &Pod) -> Vec<String> {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if host_network || finished {
        return Vec::new();
    }
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .chain(status.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

struct State {
    keys: TeamKeys,
    pods: HashMap<String, Pod>,
    ips: HashMap<String, String>,
    owners: OwnerIndex,
    namespaces: HashMap<String, NamespaceMeta>,
    dropped: u64,
}

impl Default for State {
    fn default() -> State {
        State {
            keys: TeamKeys::new("team"),
            pods: HashMap::new(),
            ips: HashMap::new(),
            owners: OwnerIndex::default(),
            namespaces: HashMap::new(),
            dropped: 0,
        }
    }
}

impl State {
    fn meta_of(&self, pod: &Pod) -> Option<PodMeta> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        pod_meta(pod, &self.owners, self.namespaces.get(ns), &self.keys)
    }

    fn upsert_pod(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if self.pods.len() >= MAX_PODS && !self.pods.contains_key(&uid) {
            self.dropped += 1;
            return;
        }
        let pod = slim(pod, &self.keys);
        self.unindex_ips(&uid);
        for ip in own_ips(&pod) {
            self.ips.insert(ip, uid.clone());
        }
        self.pods.insert(uid, pod);
    }

    fn remove_pod(&mut self, uid: &str) {
        self.unindex_ips(uid);
        self.pods.remove(uid);
    }

    /// Drops the IPs the stored pod held, unless another pod has taken them since.
    fn unindex_ips(&mut self, uid: &str) {
        let old = self.pods.get(uid).map(own_ips).unwrap_or_default();
        for ip in old {
            if self.ips.get(&ip).map(String::as_str) == Some(uid) {
                self.ips.remove(&ip);
            }
        }
    }

    fn upsert_namespace(&mut self, meta: &ObjectMeta) {
        let Some(name) = meta.name.clone() else {
            return;
        };
        if self.namespaces.len() >= MAX_NAMESPACES && !self.namespaces.contains_key(&name) {
            self.dropped += 1;
            return;
        }
        let namespace = NamespaceMeta::from_meta(meta, &self.keys);
        self.namespaces.insert(name, namespace);
    }

    fn upsert_owner(&mut self, kind: &str, meta: &ObjectMeta) {
        if !self.owners.insert(kind, meta) {
            self.dropped += 1;
        }
    }
}

/// Pods of this node, looked up by UID or IP. Cheap to clone; all clones
/// share one bounded map that the watchers keep current.
#[derive(Clone, Default)]
pub struct PodCache {
    state: Arc<RwLock<State>>,
}

impl PodCache {
    /// An empty cache that reads the team from the label and annotation `team_key`.
    pub fn new(team_key: &str) -> PodCache {
        PodCache::with_keys(TeamKeys::new(team_key))
    }

    /// An empty cache that reads the team where `keys` say.
    pub fn with_keys(keys: TeamKeys) -> PodCache {
        let cache = PodCache::default();
        cache.write().keys = keys;
        cache
    }

    pub fn by_uid(&self, uid: &str) -> Option<PodMeta> {
        let state = self.read();
        state.pods.get(uid).and_then(|p| state.meta_of(p))
    }

    pub fn by_ip(&self, ip: &str) -> Option<PodMeta> {
        let state = self.read();
        let uid = state.ips.get(ip)?;
        state.pods.get(uid).and_then(|p| state.meta_of(p))
    }

    /// Pods in the cache.
    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects not kept because a bound was reached.
    pub fn dropped(&self) -> u64 {
        self.read().dropped
    }

    /// Adds or replaces a pod (as a watch event would).
    pub fn apply_pod(&self, pod: Pod) {
        self.write().upsert_pod(pod);
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way lookups care about, so a poisoned lock is still used.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
