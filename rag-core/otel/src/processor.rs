//! A batch span processor with a bounded queue that never blocks the request path.
//!
//! Finished spans go into a fixed-size channel; one export thread batches them (by size
//! or by delay) and hands each batch to the exporter with a deadline. The thread sleeps
//! between batches and is woken only when a full batch is waiting (or for flush and
//! shutdown): waking it per span would cost a futex call and a context switch each. When the receiver
//! is slow, down or hanging the queue fills and further spans are dropped and counted:
//! memory stays at `max_queue_size` spans and requests keep their latency.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use crate::settings::BatchSettings;
use crate::{AnyExporter, Error};

/// Counters behind `minirag_agent_otlp_*` (and rag-core's equivalents).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the receiver accepted.
    pub exported: AtomicU64,
    /// Spans never sent because the queue was full (or the pipeline had stopped).
    pub dropped: AtomicU64,
    /// Spans in batches the exporter gave up on (after its own retries) or timed out, and
    /// spans the receiver rejected in a partial success.
    pub failed: AtomicU64,
}

/// Spans built on the export thread from what the caller captured: the hot path only
/// moves its fields into the closure, the formatting and allocation happen here.
pub type DeferredSpans = Box<dyn FnOnce(&mut Vec<SpanData>) + Send>;

enum Msg {
    Span(Box<SpanData>),
    Deferred(DeferredSpans, usize),
    Flush(mpsc::Sender<()>),
    Shutdown(mpsc::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct BoundedBatchProcessor {
    tx: SyncSender<Msg>,
    stats: Arc<ExportStats>,
    /// Spans queued since the export thread last drained.
    pending: Arc<AtomicUsize>,
    batch_size: usize,
    thread: std::thread::Thread,
    worker: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl BoundedBatchProcessor {
    /// Starts the export thread. The exporter is built there, inside the thread's own
    /// runtime (gRPC channels need one), and a build error is returned here.
    pub fn start(
        make_exporter: impl FnOnce() -> Result<AnyExporter, Error> + Send + 'static,
        settings: BatchSettings,
    ) -> Result<Self, Error> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(settings.max_queue_size.max(1));
        let stats = Arc::new(ExportStats::default());
        let worker_stats = Arc::clone(&stats);
        let pending = Arc::new(AtomicUsize::new(0));
        let worker_pending = Arc::clone(&pending);
        // Wake the exporter for a full batch, or earlier when the queue is smaller than a
        // batch (it would otherwise fill and drop before anyone drains it).
        let batch_size = settings
            .max_export_batch_size
            .min(settings.max_queue_size)
            .max(1);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), Error>>();
        let handle = std::thread::Builder::new()
            .name("otel-export".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Thread(e)));
                        return;
                    }
                };
                let built = {
                    let _in_runtime = rt.enter();
                    make_exporter()
                };
                match built {
                    Ok(exporter) => {
                        let _ = ready_tx.send(Ok(()));
                        export_loop(rt, exporter, settings, rx, worker_stats, worker_pending);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(Error::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Exporter(
                    "the export thread stopped during start".into(),
                ));
            }
        }
        Ok(Self {
            tx,
            stats,
            pending,
            batch_size,
            thread: handle.thread().clone(),
            worker: Arc::new(Mutex::new(Some(handle))),
        })
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    pub fn push(&self, span: SpanData) {
        self.send(Msg::Span(Box::new(span)), 1);
    }

    /// Queues `spans` finished spans to be built by `build` on the export thread.
    pub fn push_deferred(&self, spans: usize, build: DeferredSpans) {
        self.send(Msg::Deferred(build, spans), spans);
    }

    fn send(&self, msg: Msg, spans: usize) {
        match self.tx.try_send(msg) {
            Ok(()) => {
                let before = self.pending.fetch_add(spans, Ordering::Relaxed);
                if before < self.batch_size && before + spans >= self.batch_size {
                    self.thread.unpark();
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats
                    .dropped
                    .fetch_add(spans as u64, Ordering::Relaxed);
            }
        }
    }

    fn control(&self, make: fn(mpsc::Sender<()>) -> Msg, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = mpsc::channel();
        let mut msg = make(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => {
                    self.thread.unpark();
                    break;
                }
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    // The queue is full: make the exporter drain it so the control fits.
                    self.thread.unpark();
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Exports everything queued so far; false when that did not finish in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.control(Msg::Flush, timeout)
    }

    /// Flushes, stops the export thread and joins it (bounded by `timeout`).
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let done = self.control(Msg::Shutdown, timeout);
        if done
            && let Ok(mut w) = self.worker.lock()
            && let Some(h) = w.take()
        {
            let _ = h.join();
        }
        done
    }
}

/// The exporter with what each export needs: the thread's runtime, the deadline and the
/// counters.
struct Exporting {
    rt: tokio::runtime::Runtime,
    exporter: AnyExporter,
    timeout: Duration,
    stats: Arc<ExportStats>,
}

impl Exporting {
    /// Exports `batch` (leaving it empty) and counts the outcome.
    fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let (exporter, timeout) = (&mut self.exporter, self.timeout);
        // The timer must be created inside the runtime, hence the async block.
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, exporter.export(batch)).await });
        batch.clear();
        match result {
            Ok(Ok(rejected)) => {
                let rejected = rejected.min(n);
                self.stats
                    .exported
                    .fetch_add(n - rejected, Ordering::Relaxed);
                self.stats.failed.fetch_add(rejected, Ordering::Relaxed);
            }
            _ => {
                self.stats.failed.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

fn export_loop(
    rt: tokio::runtime::Runtime,
    exporter: AnyExporter,
    settings: BatchSettings,
    rx: mpsc::Receiver<Msg>,
    stats: Arc<ExportStats>,
    pending: Arc<AtomicUsize>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(settings.max_export_batch_size);
    let mut out = Exporting {
        rt,
        exporter,
        timeout: settings.export_timeout,
        stats,
    };
    let mut deadline = Instant::now() + settings.schedule_delay;
    loop {
        // Sleep until the delay is up or a producer says a full batch is waiting.
        let wait = deadline.saturating_duration_since(Instant::now());
        let wake_at = settings
            .max_export_batch_size
            .min(settings.max_queue_size)
            .max(1);
        if !wait.is_zero() && pending.load(Ordering::Relaxed) < wake_at {
            std::thread::park_timeout(wait);
        }
        let due = Instant::now() >= deadline;
        loop {
            match rx.try_recv() {
                Ok(Msg::Span(span)) => {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    batch.push(*span);
                    if batch.len() >= settings.max_export_batch_size {
                        out.export(&mut batch);
                    }
                }
                Ok(Msg::Deferred(build, n)) => {
                    pending.fetch_sub(n, Ordering::Relaxed);
                    build(&mut batch);
                    if batch.len() >= settings.max_export_batch_size {
                        out.export(&mut batch);
                    }
                }
                Ok(Msg::Flush(ack)) => {
                    out.export(&mut batch);
                    let _ = ack.send(());
                }
                Ok(Msg::Shutdown(ack)) => {
                    drain(&rx, &mut batch, &settings, &mut out);
                    out.export(&mut batch);
                    out.exporter.shutdown(Duration::from_secs(1));
                    let _ = ack.send(());
                    return;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    out.export(&mut batch);
                    return;
                }
            }
        }
        // A partial batch waits for the delay; a full one has already gone.
        if due {
            out.export(&mut batch);
            deadline = Instant::now() + settings.schedule_delay;
        }
    }
}

/// Moves the spans already queued into batches (controls arriving meanwhile are answered).
fn drain(
    rx: &mpsc::Receiver<Msg>,
    batch: &mut Vec<SpanData>,
    settings: &BatchSettings,
    out: &mut Exporting,
) {
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Span(span) => {
                batch.push(*span);
                if batch.len() >= settings.max_export_batch_size {
                    out.export(batch);
                }
            }
            Msg::Deferred(build, _) => {
                build(batch);
                if batch.len() >= settings.max_export_batch_size {
                    out.export(batch);
                }
            }
            Msg::Flush(ack) | Msg::Shutdown(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

/// The same processor behind an SDK tracer provider (rag-core's `tracing` spans).
impl SpanProcessor for BoundedBatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        if self.flush(Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(OTelSdkError::Timeout(Duration::from_secs(5)))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shutdown(timeout) {
            Ok(())
        } else {
            Err(OTelSdkError::Timeout(timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConsoleExporter;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    fn span(i: u64) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(u128::from(i) + 1),
                SpanId::from(i + 1),
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "t".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn spans_are_sent_or_counted_and_flush_gets_through_a_full_queue() {
        let p = BoundedBatchProcessor::start(
            || Ok(AnyExporter::Console(ConsoleExporter::default())),
            BatchSettings {
                max_queue_size: 4,
                max_export_batch_size: 100,
                schedule_delay: Duration::from_secs(30),
                export_timeout: Duration::from_secs(5),
            },
        )
        .unwrap();
        for i in 0..10 {
            p.push(span(i));
        }
        let stats = p.stats();
        // A flush must get through even when the queue is full (it wakes the exporter).
        assert!(p.flush(Duration::from_secs(5)));
        let exported = stats.exported.load(Ordering::Relaxed);
        let dropped = stats.dropped.load(Ordering::Relaxed);
        assert_eq!(
            exported + dropped,
            10,
            "every span is either sent or counted"
        );
        assert!(exported >= 4, "at least a queue's worth got through");
        p.push_deferred(2, Box::new(|out| out.extend([span(20), span(21)])));
        assert!(p.shutdown(Duration::from_secs(5)));
        assert_eq!(stats.exported.load(Ordering::Relaxed), exported + 2);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
        // After shutdown nothing is queued any more, and that is counted too.
        p.push(span(30));
        assert_eq!(stats.dropped.load(Ordering::Relaxed), dropped + 1);
    }
}
