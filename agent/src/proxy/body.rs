//! Response body wrapper: streams frames through untouched, cuts a body that stays
//! silent longer than the idle timeout, and reports exactly once when the body ends —
//! by completing, failing, or being dropped because the client went away. That moment,
//! not the arrival of headers, is when a request's duration, metrics and access line
//! are right for streaming responses.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::forward::BoxError;

/// How the body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    Complete,
    Failed,
    IdleTimeout,
    ClientGone,
}

pub trait OnEnd: Send + Sync + 'static {
    fn on_end(self: Box<Self>, end: BodyEnd, bytes: u64);
}

pub struct RecordBody<B: Body> {
    inner: B,
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    bytes: u64,
    done: Option<Box<dyn OnEnd>>,
}

impl<B: Body> RecordBody<B> {
    pub fn new(inner: B, idle: Duration, done: Box<dyn OnEnd>) -> Self {
        Self {
            inner,
            idle,
            sleep: None,
            bytes: 0,
            done: Some(done),
        }
    }

    fn finish(&mut self, end: BodyEnd) {
        if let Some(d) = self.done.take() {
            d.on_end(end, self.bytes);
        }
    }
}

impl<B> Body for RecordBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                this.sleep = None;
                // With a known length the server never polls past the last frame.
                if this.inner.is_end_stream() {
                    this.finish(BodyEnd::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(BodyEnd::Failed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish(BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let sleep = this.sleep.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + idle))
                });
                if sleep.as_mut().poll(cx).is_ready() {
                    this.finish(BodyEnd::IdleTimeout);
                    return Poll::Ready(Some(Err("upstream body idle timeout".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for RecordBody<B> {
    fn drop(&mut self) {
        // An empty body is never polled: it ended, nobody went away.
        let end = if self.inner.is_end_stream() {
            BodyEnd::Complete
        } else {
            BodyEnd::ClientGone
        };
        self.finish(end);
    }
}

/// Counts request body bytes as they stream upstream.
pub struct CountingBody<B> {
    inner: B,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self { inner, counter }
    }
}

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            this.counter
                .fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
