//! Sync calls in a cluster: each function has a home node (rendezvous
//! hashing over the live members, `flick_cluster::rank`) where its warm
//! instances live. A call that lands elsewhere is forwarded there over HTTP
//! (`POST /v1/cluster/invoke`, with the caller's remaining deadline), and
//! spills to the next node of the ranking when the home is saturated (no
//! free instance and no room to start one), as OpenWhisk's sharding
//! balancer does. The last candidate always takes the call (and queues it).
//! A member that cannot be reached is skipped; if none can, the call runs
//! here. Async work is not forwarded: every node's dispatcher leases from
//! the shared queue and runs what it leased.
//!
//! The home node records the activation; the forwarding node only relays
//! the outcome, which each surface renders as if it had run here.

use std::sync::Arc;
use std::time::Duration;

use flick_cluster::Membership;
use flick_core::{ActivationId, ActivationStatus, Invocation};
use flick_runtime::{FunctionError, Response};
use serde::{Deserialize, Serialize};

use crate::invoke::{Caller, InvokeResponse, Timing};
use crate::{Outcome, Platform, PlatformError, Route};

/// The header that carries the cluster's shared secret between nodes.
pub const SECRET_HEADER: &str = "x-flick-cluster-secret";

/// How this node takes part in placing calls.
pub struct Placement {
    pub membership: Arc<Membership>,
    /// Proves a forwarded call comes from a member (kept in the shared store).
    pub secret: String,
    pub client: reqwest::Client,
}

/// A call handed from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forward {
    pub invocation: Invocation,
    /// Whether the caller had the key (`false`: only public revisions).
    pub admin: bool,
    /// The revision the forwarding node resolved: the home node serves at
    /// least that one (it reloads its route if it is behind).
    pub revision_id: u64,
    /// More candidates follow: answer [`Forwarded::Saturated`] rather than
    /// queue when no instance is free.
    pub spill: bool,
}

/// The home node's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Forwarded {
    Done(WireResponse),
    /// No instance free and no room to start one: try the next node.
    Saturated,
    /// The call was refused (not found, not public, overloaded, …).
    Refused {
        kind: String,
        message: String,
    },
}

/// [`InvokeResponse`] as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireResponse {
    activation_id: ActivationId,
    function: String,
    status: ActivationStatus,
    wait_ms: f64,
    init_ms: f64,
    exec_ms: f64,
    total_ms: f64,
    prewarmed: bool,
    outcome: WireOutcome,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireOutcome {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        #[serde(with = "flick_core::invocation::body_base64")]
        body: Vec<u8>,
    },
    FunctionError(FunctionError),
    Timeout {
        after_ms: u64,
    },
    OutOfMemory {
        limit: u64,
    },
    BadRequest {
        message: String,
    },
    PlatformFault,
    CallerGaveUp {
        waited_ms: u64,
        abandoned: bool,
    },
}

impl WireResponse {
    fn of(r: InvokeResponse) -> Result<Self, PlatformError> {
        let outcome = match r.outcome {
            Outcome::Response(resp) => {
                WireOutcome::Response { status: resp.status, headers: resp.headers, body: resp.body.to_vec() }
            }
            Outcome::FunctionError(e) => WireOutcome::FunctionError(e),
            Outcome::Timeout { after } => WireOutcome::Timeout { after_ms: after.as_millis() as u64 },
            Outcome::OutOfMemory { limit } => WireOutcome::OutOfMemory { limit },
            Outcome::BadRequest(message) => WireOutcome::BadRequest { message },
            Outcome::PlatformFault => WireOutcome::PlatformFault,
            Outcome::CallerGaveUp { waited, abandoned } => {
                WireOutcome::CallerGaveUp { waited_ms: waited.as_millis() as u64, abandoned }
            }
            // Sequences are never forwarded (their steps are).
            Outcome::SequenceFailed(f) => {
                return Err(PlatformError::Internal(format!("a forwarded call ended as a sequence: {}", f.message)));
            }
        };
        let t = r.timing;
        Ok(Self {
            activation_id: r.activation_id,
            function: r.function,
            status: r.status,
            wait_ms: t.wait_ms,
            init_ms: t.init_ms,
            exec_ms: t.exec_ms,
            total_ms: t.total_ms,
            prewarmed: t.prewarmed,
            outcome,
        })
    }

    fn into_response(self) -> InvokeResponse {
        let outcome = match self.outcome {
            WireOutcome::Response { status, headers, body } => {
                Outcome::Response(Response { status, headers, body: body.into() })
            }
            WireOutcome::FunctionError(e) => Outcome::FunctionError(e),
            WireOutcome::Timeout { after_ms } => Outcome::Timeout { after: Duration::from_millis(after_ms) },
            WireOutcome::OutOfMemory { limit } => Outcome::OutOfMemory { limit },
            WireOutcome::BadRequest { message } => Outcome::BadRequest(message),
            WireOutcome::PlatformFault => Outcome::PlatformFault,
            WireOutcome::CallerGaveUp { waited_ms, abandoned } => {
                Outcome::CallerGaveUp { waited: Duration::from_millis(waited_ms), abandoned }
            }
        };
        InvokeResponse {
            activation_id: self.activation_id,
            function: self.function,
            status: self.status,
            timing: Timing {
                wait_ms: self.wait_ms,
                init_ms: self.init_ms,
                exec_ms: self.exec_ms,
                total_ms: self.total_ms,
                prewarmed: self.prewarmed,
            },
            outcome,
        }
    }
}

/// A refusal as it crosses between nodes, and back.
fn refusal(e: &PlatformError) -> Forwarded {
    let kind = match e {
        PlatformError::FunctionNotFound(_) => "not_found",
        PlatformError::NotPublic(_) => "not_public",
        PlatformError::Overloaded { .. } => "overloaded",
        PlatformError::HostFull { .. } => "host_full",
        PlatformError::BadRequest(_) => "bad_request",
        _ => "internal",
    };
    Forwarded::Refused { kind: kind.into(), message: e.to_string() }
}

fn refused(function: &str, kind: &str, message: String) -> PlatformError {
    match kind {
        "not_found" => PlatformError::FunctionNotFound(function.into()),
        "not_public" => PlatformError::NotPublic(function.into()),
        "overloaded" => PlatformError::Overloaded { function: function.into(), reason: message },
        "host_full" => PlatformError::HostFull { function: function.into() },
        "bad_request" => PlatformError::BadRequest(message),
        _ => PlatformError::Internal(format!("the function's home node: {message}")),
    }
}

impl Platform {
    /// Takes part in a cluster: sync calls go to their function's home node.
    pub fn join_cluster(&self, placement: Placement) {
        if self.placement.set(placement).is_err() {
            tracing::warn!("join_cluster called twice; keeping the first placement");
        }
    }

    /// The secret a forwarded call must carry (`None`: not in a cluster).
    pub fn cluster_secret(&self) -> Option<&str> {
        self.placement.get().map(|p| p.secret.as_str())
    }

    /// Keeps every pool at this node's share of its function's
    /// `max_instances` (`flick_cluster::share`: the home node's is the
    /// largest, all shares sum to the bound), following membership and
    /// route changes until `shutdown`. So the bound holds across the
    /// cluster: a node never starts more than its share, and calls beyond
    /// the home's share spill to the nodes that hold the rest.
    pub async fn follow_members(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let Some(p) = self.placement.get() else { return };
        let mut members = p.membership.watch();
        let mut routes = self.route_changes();
        tokio::pin!(shutdown);
        loop {
            let now = members.borrow_and_update().clone();
            routes.borrow_and_update();
            for route in self.routes_snapshot() {
                let ranked = flick_cluster::rank(&route.revision.function, &now);
                let position = ranked.iter().position(|n| n.id == p.membership.id()).unwrap_or(ranked.len());
                route.pool.set_share(flick_cluster::share(
                    route.revision.manifest.max_instances,
                    ranked.len(),
                    position,
                ));
            }
            tokio::select! {
                r = members.changed() => if r.is_err() { return },
                r = routes.changed() => if r.is_err() { return },
                _ = &mut shutdown => return,
            }
        }
    }

    /// Answers a call elsewhere when its function's home is another node:
    /// `None` means run it here.
    pub(crate) async fn place(
        &self,
        route: &Arc<Route>,
        caller: Caller,
        inv: &Invocation,
    ) -> Option<Result<InvokeResponse, PlatformError>> {
        let p = self.placement.get()?;
        if route.revision.manifest.runtime == flick_core::RuntimeKind::Sequence {
            return None;
        }
        let members = p.membership.current();
        if members.len() < 2 {
            return None;
        }
        let ranked = flick_cluster::rank(&route.revision.function, &members);
        // Only nodes with a share of `max_instances` can take the call.
        let max = route.revision.manifest.max_instances;
        let candidates: Vec<_> = ranked
            .iter()
            .enumerate()
            .filter(|(i, _)| flick_cluster::share(max, ranked.len(), *i) > 0)
            .map(|(_, n)| *n)
            .collect();
        let last = candidates.len().saturating_sub(1);
        for (i, node) in candidates.iter().enumerate() {
            if node.id == p.membership.id() {
                if i == last || !route.pool.saturated() {
                    return None;
                }
                continue;
            }
            let forward = Forward {
                invocation: inv.clone(),
                admin: caller == Caller::Admin,
                revision_id: route.revision.id,
                spill: i < last,
            };
            match self.send(p, &node.address, &route.revision.manifest.timeout, forward).await {
                Ok(Forwarded::Done(r)) => return Some(Ok(r.into_response())),
                Ok(Forwarded::Saturated) => continue,
                Ok(Forwarded::Refused { kind, message }) => {
                    return Some(Err(refused(&route.revision.function, &kind, message)));
                }
                Err(e) => {
                    tracing::warn!(node = %node.id, address = %node.address, error = %e, "forwarding failed; trying the next node");
                }
            }
        }
        None
    }

    async fn send(
        &self,
        p: &Placement,
        address: &str,
        timeout: &Duration,
        forward: Forward,
    ) -> Result<Forwarded, reqwest::Error> {
        // The caller's budget (or the function's timeout), and time for the
        // home node to start an instance and answer.
        let wait = forward.invocation.budget_ms.map_or(*timeout, Duration::from_millis) + Duration::from_secs(5);
        p.client
            .post(format!("{address}/v1/cluster/invoke"))
            .header(SECRET_HEADER, &p.secret)
            .timeout(wait)
            .json(&forward)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    /// Runs a call another node forwarded here (the home, or a spill
    /// candidate), never forwarding it again.
    pub async fn accept_forwarded(self: &Arc<Self>, forward: Forward) -> Forwarded {
        let name = forward.invocation.function.clone();
        let route = match self.route(&name) {
            Some(r) if r.revision.id >= forward.revision_id => Some(r),
            // This node has not seen the change yet: catch up first.
            _ => {
                self.reload(&name).await;
                self.route(&name)
            }
        };
        let Some(route) = route else {
            return refusal(&PlatformError::FunctionNotFound(name));
        };
        let caller = if forward.admin { Caller::Admin } else { Caller::Anonymous };
        if caller == Caller::Anonymous && !route.revision.manifest.public {
            return refusal(&PlatformError::NotPublic(name));
        }
        if forward.spill && route.pool.saturated() {
            return Forwarded::Saturated;
        }
        match self.invoke_here(route, caller, forward.invocation).await {
            Ok(r) => match WireResponse::of(r) {
                Ok(w) => Forwarded::Done(w),
                Err(e) => refusal(&e),
            },
            Err(e) => refusal(&e),
        }
    }
}
