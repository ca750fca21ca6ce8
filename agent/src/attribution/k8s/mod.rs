//! Kubernetes metadata for attribution: pod UID or pod IP → namespace, name,
//! labels, workload and team. `pod_meta` is pure; `watch` keeps the cache
//! current from the API server.

mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub use watch::start;

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
    pub team: Option<String>,
    pub labels: BTreeMap<String, String>,
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
    namespace_labels: Option<&BTreeMap<String, String>>,
    team_label: &str,
) -> Option<PodMeta> {
    let meta = &pod.metadata;
    let name = meta.name.clone()?;
    let namespace = meta.namespace.clone()?;
    let uid = meta.uid.clone()?;
    let labels = meta.labels.clone().unwrap_or_default();
    let (workload_kind, workload) = workload_of(meta, &namespace, &name, &labels, owners);
    let team = labels
        .get(team_label)
        .or_else(|| namespace_labels.and_then(|l| l.get(team_label)))
        .filter(|t| !t.is_empty())
        .cloned();
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
fn slim(pod: Pod) -> Pod {
    let meta = pod.metadata;
    Pod {
        metadata: ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            labels: meta.labels,
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
    team_label: String,
    pods: HashMap<String, Pod>,
    ips: HashMap<String, String>,
    owners: OwnerIndex,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    dropped: u64,
}

impl Default for State {
    fn default() -> State {
        State {
            team_label: "team".to_string(),
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
        pod_meta(pod, &self.owners, self.namespaces.get(ns), &self.team_label)
    }

    fn upsert_pod(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if self.pods.len() >= MAX_PODS && !self.pods.contains_key(&uid) {
            self.dropped += 1;
            return;
        }
        let pod = slim(pod);
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
        self.namespaces
            .insert(name, meta.labels.clone().unwrap_or_default());
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
    /// An empty cache that reads the team from `team_label`.
    pub fn new(team_label: &str) -> PodCache {
        let cache = PodCache::default();
        cache.write().team_label = team_label.to_string();
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
