//! From a decoded call to the record every exporter reads: attribution,
//! wall-clock time and price. `gpu` holds self-hosted calls until their GPU
//! share is known.

pub mod gpu;

use crate::{
    attribution::{attribute, k8s::PodCache, k8s::PodMeta, ProcessTable},
    pricing::{CallPrice, Pricer},
    record::{Attribution, CallRecord, LlmCall, Side},
    streams::ConnMeta,
};

/// The capture clock (CLOCK_MONOTONIC, as `bpf_ktime_get_ns`) to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Unix nanoseconds minus monotonic nanoseconds, taken at one instant.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let mono = monotonic_ns();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        WallClock {
            offset_ns: unix - i128::from(mono),
        }
    }

    pub fn fixed(offset_ns: i128) -> WallClock {
        WallClock { offset_ns }
    }

    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// Nanoseconds of CLOCK_MONOTONIC, the clock eBPF timestamps use.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Builds records; owns nothing that does I/O besides the process table's /proc reads.
pub struct Enricher {
    pub clock: WallClock,
    pub node: Option<String>,
    pub pricer: Pricer,
    /// Pod metadata from the API server, when Kubernetes attribution is on.
    pub pods: Option<PodCache>,
}

impl Enricher {
    pub fn enrich(&self, meta: &ConnMeta, call: LlmCall, procs: &mut ProcessTable) -> CallRecord {
        let info = procs.lookup(meta.pid, &meta.comm, meta.cgroup_id);
        let mut attribution = attribute(info, meta.pid, &meta.comm, self.node.as_deref());
        if let Some(pods) = &self.pods {
            if let Some(pod) = attribution
                .pod_uid
                .as_deref()
                .and_then(|uid| pods.by_uid(uid))
            {
                apply_pod(&mut attribution, pod);
            }
            // A call this node served is charged to the team of the pod that made it.
            if meta.side == Side::Server {
                let caller = meta
                    .endpoints
                    .and_then(|e| pods.by_ip(&e.remote.ip().to_string()));
                if let Some(team) = caller.and_then(|pod| pod.team) {
                    attribution.team = Some(team);
                }
            }
        }
        // A caller on this node, seen by its socket, is charged before any
        // pod IP guess: it is exact, and covers processes outside pods.
        if let Some(peer) = &meta.caller {
            let info = procs.lookup(peer.pid, &peer.comm, peer.cgroup_id);
            let mut who = attribute(info, peer.pid, &peer.comm, self.node.as_deref());
            if let Some(pods) = &self.pods {
                if let Some(pod) = who.pod_uid.as_deref().and_then(|uid| pods.by_uid(uid)) {
                    apply_pod(&mut who, pod);
                }
            }
            if who.team.is_some() {
                attribution.team = who.team.clone();
            }
            attribution.caller = Some(crate::record::Caller {
                pid: peer.pid,
                comm: peer.comm.clone(),
                namespace: who.namespace,
                pod: who.pod,
                team: who.team,
            });
        }
        let cost_usd = match self.pricer.price_call(meta.side, &call) {
            CallPrice::Priced(cost) => Some(cost.usd()),
            CallPrice::Unpriced | CallPrice::SelfHosted => None,
        };
        let secs = |ns: u64| ns as f64 / 1e9;
        CallRecord {
            side: meta.side,
            time_unix_nano: self.clock.unix_ns(call.start_ns),
            duration_s: secs(call.end_ns.saturating_sub(call.start_ns)),
            ttft_s: call
                .first_token_ns
                .map(|t| secs(t.saturating_sub(call.start_ns))),
            attribution,
            peer: meta.endpoints.map(|e| e.remote.to_string()),
            local: meta.endpoints.map(|e| e.local.to_string()),
            tls: meta.tls.map(str::to_string),
            cost_usd,
            gpu: None,
            gpu_share: None,
            call,
        }
    }
}

/// Fills namespace, pod, container name, workload and team from the pod's metadata.
pub fn apply_pod(a: &mut Attribution, pod: PodMeta) {
    a.container = a
        .container_id
        .as_deref()
        .and_then(|id| pod.container_name(id))
        .map(str::to_string);
    a.pod_uid = Some(pod.uid);
    a.namespace = Some(pod.namespace);
    a.pod = Some(pod.name);
    a.workload_kind = Some(pod.workload_kind);
    a.workload = Some(pod.workload);
    a.team = pod.team;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Endpoints;

    const PODS: &str = include_str!("../../../tests/fixtures/k8s/pods.json");

    fn served_call() -> LlmCall {
        LlmCall::served_chat(0, 0, 1_000, 2_001_000)
    }

    #[test]
    fn a_served_call_is_charged_to_the_calling_pods_team() {
        let pods = PodCache::new("team");
        let list: serde_json::Value = serde_json::from_str(PODS).unwrap();
        for item in list["items"].as_array().unwrap() {
            pods.apply_pod(serde_json::from_value(item.clone()).unwrap());
        }
        let enricher = Enricher {
            clock: WallClock::fixed(0),
            node: Some("node-a".into()),
            pricer: Pricer::builtin(),
            pods: Some(pods),
        };
        let meta = |side, remote: &str| ConnMeta {
            conn_id: 1,
            pid: std::process::id(),
            comm: "vllm".into(),
            cgroup_id: 0,
            side,
            tls: None,
            endpoints: Some(Endpoints {
                local: "10.244.1.31:8000".parse().unwrap(),
                remote: remote.parse().unwrap(),
            }),
            authority: None,
            caller: None,
        };
        let mut procs = ProcessTable::new("/proc", 0, 10);
        // embed-nightly (team nlp) at 10.244.1.23 calls the server.
        let r = enricher.enrich(
            &meta(Side::Server, "10.244.1.23:40000"),
            served_call(),
            &mut procs,
        );
        assert_eq!(r.attribution.team.as_deref(), Some("nlp"));
        assert_eq!(r.duration_s, 0.002);
        assert_eq!(r.cost_usd, None, "self-hosted: no token price");
        // An unknown caller leaves the team alone; a client call is never re-charged.
        let r = enricher.enrich(
            &meta(Side::Server, "10.9.9.9:40000"),
            served_call(),
            &mut procs,
        );
        assert_eq!(r.attribution.team, None);
        let r = enricher.enrich(
            &meta(Side::Client, "10.244.1.23:8000"),
            served_call(),
            &mut procs,
        );
        assert_eq!(r.attribution.team, None);
    }

    #[test]
    fn a_process_in_no_pod_gets_its_user_and_host_team_with_or_without_kubernetes() {
        let dir = std::env::temp_dir().join(format!("tokenscope-enrich-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            .and_then(|u| u.parse().ok())
            .unwrap();
        std::fs::write(&passwd, format!("builder:x:{uid}:{uid}::/:/bin/sh\n")).unwrap();
        let mut teams = crate::attribution::HostTeams::default();
        teams.by_user.insert("builder".into(), "platform".into());
        let meta = ConnMeta {
            conn_id: 1,
            pid: std::process::id(),
            comm: "python3".into(),
            cgroup_id: 0,
            side: Side::Client,
            tls: None,
            endpoints: None,
            authority: None,
            caller: None,
        };
        for pods in [None, Some(PodCache::new("team"))] {
            let enricher = Enricher {
                clock: WallClock::fixed(0),
                node: Some("node-a".into()),
                pricer: Pricer::builtin(),
                pods,
            };
            let mut procs = ProcessTable::new("/proc", 0, 10)
                .with_passwd(passwd.to_str().unwrap())
                .with_host_teams(teams.clone());
            let r = enricher.enrich(&meta, served_call(), &mut procs);
            let a = &r.attribution;
            assert_eq!((a.uid, a.user.as_deref()), (Some(uid), Some("builder")));
            // This test may itself run in a container or a unit; the rule is for processes in neither.
            if a.container_id.is_none() && a.pod_uid.is_none() && a.systemd_unit.is_none() {
                assert_eq!(a.team.as_deref(), Some("platform"));
            }
            assert_eq!(a.pod, None);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wall_clock_maps_monotonic_time_to_now() {
        let clock = WallClock::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let mapped = clock.unix_ns(monotonic_ns());
        assert!(mapped.abs_diff(unix) < 1_000_000_000, "{mapped} vs {unix}");
        assert_eq!(WallClock::fixed(-10).unix_ns(5), 0);
    }
}
