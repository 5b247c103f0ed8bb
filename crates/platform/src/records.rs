//! Writing activation records off the request path.
//!
//! Every invocation hands its record to one writer task and answers at
//! once; the task stores whatever has queued up in one transaction, so a
//! busy function costs a commit per batch, not per call. Reads flush first
//! ([`Recorder::flush`]), so a client still reads its own record right
//! after the response.

use std::sync::Arc;

use flick_core::Activation;
use flick_store::Store;
use tokio::sync::{mpsc, oneshot};

/// Most records stored in one transaction.
const MAX_BATCH: usize = 512;

enum Msg {
    Record(Box<Activation>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Recorder {
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(store, rx));
        Self { tx }
    }

    pub fn record(&self, activation: Activation) {
        if self.tx.send(Msg::Record(Box::new(activation))).is_err() {
            tracing::error!("activation writer is gone; a record was lost");
        }
    }

    /// Returns once every record handed over before this call is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_batches(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut batch: Vec<Activation> = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Take whatever else is already queued, up to a batch.
        while let Some(msg) = next {
            match msg {
                Msg::Record(a) => batch.push(*a),
                Msg::Flush(done) => flushes.push(done),
            }
            next = if batch.len() < MAX_BATCH { rx.try_recv().ok() } else { None };
        }
        if !batch.is_empty() {
            if let Err(e) = store.insert_activations(&batch).await {
                tracing::error!(error = %e, records = batch.len(), "could not store activation records");
            }
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
