//! The HTTP layer shared by every listener: an accept loop, one hyper connection task per
//! socket, and the outer service that journals each vendor request and carries out injected
//! faults before handing the request to the vendor's axum router.
//!
//! Control requests (`/_sim/...`) are neither journaled nor faulted.
//! Shutdown: one `watch` signal stops the accept loop, which aborts its connection tasks.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::faults::{FaultAction, Vendor};
use crate::journal::InFlight;
use crate::Control;

/// Marker inserted into a request's extensions when a paging-loop fault fired.
#[derive(Clone, Copy, Debug)]
pub struct PagingLoop;

/// Serve `router` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    vendor: Option<Vendor>,
    router: Router,
    ctx: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (router, ctx) = (router.clone(), Arc::clone(&ctx));
                conns.spawn(async move {
                    let reset = Arc::new(AtomicBool::new(false));
                    let io = TokioIo::new(ResettableStream { inner: stream, reset: Arc::clone(&reset) });
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, vendor, router.clone(), Arc::clone(&ctx), Arc::clone(&reset))
                    });
                    if let Err(e) = http1::Builder::new().serve_connection(io, svc).await {
                        debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    conns.abort_all();
}

/// The service error that makes hyper drop the connection without a response.
#[derive(Debug)]
pub struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by fault injection")
    }
}

impl std::error::Error for ResetConnection {}

async fn handle(
    req: Request<Incoming>,
    vendor: Option<Vendor>,
    router: Router,
    ctx: Arc<Control>,
    reset: Arc<AtomicBool>,
) -> Result<Response<TrackedBody>, ResetConnection> {
    let mut req = req.map(Body::new);
    let path = req.uri().path().to_string();
    let Some(vendor) = vendor.filter(|_| !path.starts_with("/_sim")) else {
        let resp = call(router, req).await;
        return Ok(resp.map(|b| TrackedBody::new(b, None, BodyMode::Pass)));
    };
    let method = req.method().to_string();
    let mut guard = ctx.journal.begin(vendor, &method, &path, req.uri().query());
    let mut mode = BodyMode::Pass;
    let mut early = None;
    let mut hold = Duration::ZERO;
    for action in ctx.faults.take(vendor, &method, &path) {
        guard.add_fault(action.name());
        match action {
            FaultAction::Latency { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
            FaultAction::ResponseLatency { ms } => hold += Duration::from_millis(ms),
            FaultAction::ConnectionReset => {
                reset.store(true, Ordering::SeqCst);
                guard.finish();
                return Err(ResetConnection);
            }
            FaultAction::TooManyRequests { retry_after_secs } => {
                early = Some(vendor_error(vendor, 429, Some(retry_after_secs)));
            }
            FaultAction::ServerError { status } => {
                early = Some(vendor_error(vendor, status, None));
            }
            FaultAction::MalformedBody => mode = BodyMode::Malformed { after: 64 },
            FaultAction::TruncatedBody { after_bytes } => {
                mode = BodyMode::Truncate(after_bytes.unwrap_or(64))
            }
            FaultAction::PagingLoop => {
                req.extensions_mut().insert(PagingLoop);
            }
        }
    }
    let mut resp = match early {
        Some(r) => r,
        None => call(router, req).await,
    };
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    guard.set_status(resp.status().as_u16());
    if !matches!(mode, BodyMode::Pass) {
        resp.headers_mut().remove(CONTENT_LENGTH);
    }
    Ok(resp.map(|b| TrackedBody::new(b, Some(guard), mode)))
}

async fn call(router: Router, req: Request<Body>) -> Response {
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

fn vendor_error(vendor: Vendor, status: u16, retry_after: Option<u64>) -> Response {
    let mut resp = match vendor {
        Vendor::Jira => crate::jira::fault_response(status),
        Vendor::Qualys => crate::qualys::fault_response(status),
        Vendor::Nexpose => crate::nexpose::fault_response(status),
    };
    if let Some(secs) = retry_after {
        if let Ok(v) = http::HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
    }
    resp
}

/// How a response body is passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    Pass,
    Truncate(usize),
    Malformed { after: usize },
}

const GARBAGE: &[u8] = b"\x00<<<\xff\xfe{\"aegis-sim\": malformed </NOT-CLOSED";

/// A response body that closes its journal entry when the last byte was handed to hyper (or
/// the body was dropped), and applies truncation or corruption faults.
pub struct TrackedBody {
    inner: Option<Body>,
    guard: Option<InFlight>,
    mode: BodyMode,
    sent: usize,
}

impl TrackedBody {
    fn new(inner: Body, guard: Option<InFlight>, mode: BodyMode) -> TrackedBody {
        TrackedBody {
            inner: Some(inner),
            guard,
            mode,
            sent: 0,
        }
    }

    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.inner = None;
        if let Some(mut g) = self.guard.take() {
            g.finish();
        }
        Poll::Ready(None)
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return this.end();
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                if let BodyMode::Malformed { .. } = this.mode {
                    // Body shorter than the cut: append the garbage at its end.
                    this.inner = None;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(GARBAGE)))));
                }
                this.end()
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => {
                let limit = match this.mode {
                    BodyMode::Pass => return Poll::Ready(Some(Ok(frame))),
                    BodyMode::Truncate(n) => n,
                    BodyMode::Malformed { after } => after,
                };
                let Ok(data) = frame.into_data() else {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::new()))));
                };
                let room = limit.saturating_sub(this.sent);
                if data.len() < room {
                    this.sent += data.len();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                let mut out = data.slice(..room).to_vec();
                if let BodyMode::Malformed { .. } = this.mode {
                    out.extend_from_slice(GARBAGE);
                }
                // Stop after this frame.
                this.inner = None;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            None => true,
            Some(b) => matches!(self.mode, BodyMode::Pass) && b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, self.mode) {
            (Some(b), BodyMode::Pass) => b.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.finish();
        }
    }
}

/// A TCP stream that is reset (SO_LINGER 0) instead of closed when a fault asked for it.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // A zero linger never blocks: close() discards buffers and sends RST at once.
            #[allow(deprecated)]
            let _ = self.inner.set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
