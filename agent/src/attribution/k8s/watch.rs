//! Watchers that keep a `PodCache` current: this node's pods (full objects)
//! and namespaces, ReplicaSets and Jobs (metadata only).

use std::collections::HashSet;
use std::fmt::Debug;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{K8sError, PodCache, State, TeamKeys};

/// Starts the watchers and returns the cache they fill, reading the team from
/// the label and annotation `team_key`. API errors are logged and retried
/// with backoff; the watchers stop on `shutdown`.
pub async fn start(
    client: Client,
    node_name: &str,
    team_key: &str,
    shutdown: CancellationToken,
) -> Result<PodCache, K8sError> {
    start_with(client, node_name, TeamKeys::new(team_key), shutdown).await
}

/// As [`start`], with the team label and annotation given apart.
pub async fn start_with(
    client: Client,
    node_name: &str,
    keys: TeamKeys,
    shutdown: CancellationToken,
) -> Result<PodCache, K8sError> {
    if node_name.trim().is_empty() {
        return Err(K8sError::NoNodeName);
    }
    let team_label = keys.label.clone();
    let cache = PodCache::with_keys(keys);
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    spawn(Api::<Pod>::all(client.clone()), on_node, &cache, &shutdown);
    spawn(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
        &cache,
        &shutdown,
    );
    spawn(
        Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
        watcher::Config::default(),
        &cache,
        &shutdown,
    );
    spawn(
        Api::<PartialObjectMeta<Job>>::all(client),
        watcher::Config::default(),
        &cache,
        &shutdown,
    );
    tracing::info!(event = "k8s.watch_started", node = node_name, team_label = %team_label);
    Ok(cache)
}

fn spawn<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    cache: &PodCache,
    shutdown: &CancellationToken,
) {
    let stream = watcher(api, config).default_backoff();
    tokio::spawn(run(stream, cache.clone(), shutdown.clone()));
}

async fn run<K: Watched>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    cache: PodCache,
    shutdown: CancellationToken,
) {
    let mut stream = std::pin::pin!(stream);
    // Keys seen since the last (re)list began; at its end, the rest are gone.
    let mut relisting: Option<HashSet<String>> = None;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = stream.next() => next,
        };
        let event = match next {
            None => break,
            Some(Err(error)) => {
                tracing::warn!(event = "k8s.watch_error", resource = K::RESOURCE, %error);
                continue;
            }
            Some(Ok(event)) => event,
        };
        match event {
            Event::Init => relisting = Some(HashSet::new()),
            Event::InitApply(obj) => {
                if let (Some(seen), Some(key)) = (relisting.as_mut(), obj.key()) {
                    seen.insert(key);
                }
                obj.apply(&mut cache.write());
            }
            Event::InitDone => {
                if let Some(seen) = relisting.take() {
                    K::retain(&mut cache.write(), &seen);
                    tracing::info!(
                        event = "k8s.listed",
                        resource = K::RESOURCE,
                        objects = seen.len()
                    );
                }
            }
            Event::Apply(obj) => obj.apply(&mut cache.write()),
            Event::Delete(obj) => obj.delete(&mut cache.write()),
        }
    }
    tracing::debug!(event = "k8s.watch_stopped", resource = K::RESOURCE);
}

/// How one watched resource updates the cache.
trait Watched: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static {
    const RESOURCE: &'static str;
    fn key(&self) -> Option<String>;
    fn apply(self, state: &mut State);
    fn delete(&self, state: &mut State);
    fn retain(state: &mut State, keep: &HashSet<String>);
}

impl Watched for Pod {
    const RESOURCE: &'static str = "pods";
    fn key(&self) -> Option<String> {
        self.metadata.uid.clone()
    }
    fn apply(self, state: &mut State) {
        state.upsert_pod(self);
    }
    fn delete(&self, state: &mut State) {
        if let Some(uid) = &self.metadata.uid {
            state.remove_pod(uid);
        }
    }
    fn retain(state: &mut State, keep: &HashSet<String>) {
        let gone: Vec<String> = state
            .pods
            .keys()
            .filter(|uid| !keep.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            state.remove_pod(&uid);
        }
    }
}

impl Watched for PartialObjectMeta<Namespace> {
    const RESOURCE: &'static str = "namespaces";
    fn key(&self) -> Option<String> {
        self.metadata.name.clone()
    }
    fn apply(self, state: &mut State) {
        state.upsert_namespace(&self.metadata);
    }
    fn delete(&self, state: &mut State) {
        if let Some(name) = &self.metadata.name {
            state.namespaces.remove(name);
        }
    }
    fn retain(state: &mut State, keep: &HashSet<String>) {
        state.namespaces.retain(|name, _| keep.contains(name));
    }
}

/// ReplicaSets and Jobs: only who controls them matters.
macro_rules! owner_resource {
    ($ty:ty, $kind:literal, $resource:literal) => {
        impl Watched for PartialObjectMeta<$ty> {
            const RESOURCE: &'static str = $resource;
            fn key(&self) -> Option<String> {
                let m = &self.metadata;
                Some(format!("{}/{}", m.namespace.as_ref()?, m.name.as_ref()?))
            }
            fn apply(self, state: &mut State) {
                state.upsert_owner($kind, &self.metadata);
            }
            fn delete(&self, state: &mut State) {
                let m = &self.metadata;
                if let (Some(ns), Some(name)) = (&m.namespace, &m.name) {
                    state.owners.remove($kind, ns, name);
                }
            }
            fn retain(state: &mut State, keep: &HashSet<String>) {
                state
                    .owners
                    .retain($kind, |ns, name| keep.contains(&format!("{ns}/{name}")));
            }
        }
    };
}

owner_resource!(ReplicaSet, "ReplicaSet", "replicasets");
owner_resource!(Job, "Job", "jobs");
