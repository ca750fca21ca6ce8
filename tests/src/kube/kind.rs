//! The Kubernetes resources the fake API server serves.

/// The resources the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    Namespace,
    ReplicaSet,
    Job,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Pod, Kind::Namespace, Kind::ReplicaSet, Kind::Job];

    /// The collection's URL path (cluster-wide).
    pub fn path(self) -> &'static str {
        match self {
            Kind::Pod => "/api/v1/pods",
            Kind::Namespace => "/api/v1/namespaces",
            Kind::ReplicaSet => "/apis/apps/v1/replicasets",
            Kind::Job => "/apis/batch/v1/jobs",
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Job => "Job",
        }
    }

    pub(super) fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Namespace => "v1",
            Kind::ReplicaSet => "apps/v1",
            Kind::Job => "batch/v1",
        }
    }

    pub(super) fn of_path(path: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.path() == path)
    }
}
