//! The real [`Sink`]: events become durable async invocations of the
//! platform (`Platform::submit`), request-reply messages synchronous calls
//! (`Platform::invoke`), and cron ticks rows of the store. Triggers act for
//! the function's owner, so they reach private functions too.

use std::sync::Arc;

use async_trait::async_trait;
use flick_core::{ActivationId, Invocation};
use flick_platform::{Caller, Platform, PlatformError};

use crate::manager::Wanted;
use crate::sink::{Reply, Sink, SinkError};

pub struct PlatformSink {
    platform: Arc<Platform>,
}

impl PlatformSink {
    pub fn new(platform: Arc<Platform>) -> Arc<Self> {
        Arc::new(Self { platform })
    }
}

fn sink_error(e: PlatformError) -> SinkError {
    match e {
        PlatformError::FunctionNotFound(f) => SinkError::Gone(f),
        e @ (PlatformError::QueueFull { .. }
        | PlatformError::StorageFull(_)
        | PlatformError::Busy(_)
        | PlatformError::Overloaded { .. }
        | PlatformError::HostFull { .. }) => SinkError::Refused(e.to_string()),
        e => SinkError::Failed(e.to_string()),
    }
}

#[async_trait]
impl Sink for PlatformSink {
    async fn submit(&self, inv: Invocation, idempotency_key: Option<String>) -> Result<ActivationId, SinkError> {
        let route = self.platform.resolve(&inv.function).await.ok_or_else(|| SinkError::Gone(inv.function.clone()))?;
        let submitted = self.platform.submit(route, Caller::Admin, inv, idempotency_key).await.map_err(sink_error)?;
        Ok(submitted.id)
    }

    async fn call(&self, inv: Invocation) -> Result<Reply, SinkError> {
        let route = self.platform.resolve(&inv.function).await.ok_or_else(|| SinkError::Gone(inv.function.clone()))?;
        let out = self.platform.invoke(route, Caller::Admin, inv).await.map_err(sink_error)?;
        let response = out.native_response();
        Ok(Reply {
            activation_id: out.activation_id.to_string(),
            status: out.status.as_str().to_string(),
            http_status: response.status,
            body: response.body.to_vec(),
        })
    }

    async fn last_tick(&self, function: &str, trigger: &str) -> Result<Option<(String, i64)>, SinkError> {
        self.platform.store().trigger_tick(function, trigger).await.map_err(|e| SinkError::Failed(e.to_string()))
    }

    async fn set_last_tick(
        &self,
        function: &str,
        trigger: &str,
        schedule: &str,
        tick_ms: i64,
    ) -> Result<(), SinkError> {
        self.platform
            .store()
            .set_trigger_tick(function, trigger, schedule, tick_ms)
            .await
            .map_err(|e| SinkError::Failed(e.to_string()))
    }
}

/// The triggers of every function's current revision.
pub fn wanted_from_routes(platform: &Platform) -> Vec<Wanted> {
    platform
        .routes_snapshot()
        .into_iter()
        .filter(|r| !r.revision.manifest.triggers.is_empty())
        .map(|r| Wanted {
            function: r.revision.function.clone(),
            revision: r.revision.number,
            triggers: r.revision.manifest.triggers.clone(),
        })
        .collect()
}
