//! The playground's static file server: `serve [DIR] [PORT]` serves DIR (default `www`) on
//! 127.0.0.1:PORT (default 8080; 0 picks a free port, printed on stdout).
//!
//! Files are served by tower-http's `ServeDir` (MIME types, HEAD, `Range`,
//! `If-Modified-Since`, 405 for other methods, no directory listings) on hyper's HTTP/1
//! server. What this file adds is only policy:
//! - nothing outside DIR is reachable, symbolic links included (`ServeDir` refuses `..` but
//!   follows links);
//! - bounded requests: a header must arrive within [`HEADER_TIMEOUT`], a response start
//!   within [`RESPONSE_TIMEOUT`], a request body is at most [`MAX_BODY`] bytes (GET and HEAD
//!   carry none), and at most [`MAX_CONNECTIONS`] connections are served at once;
//! - `Cache-Control: no-cache`, so a rebuilt `www/pkg/` is never shadowed by a stale copy.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let mut args = std::env::args().skip(1);
    let root = std::path::PathBuf::from(args.next().unwrap_or_else(|| "www".into()));
    let port: u16 = match args.next().map(|p| p.parse()) {
        None => 8080,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("serve: bad port: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let result = runtime.and_then(|rt| rt.block_on(native::serve(&root, port)));
    if let Err(e) = result {
        eprintln!("serve: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::{Request, State};
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use axum::Router;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::services::ServeDir;
    use tower_http::set_header::SetResponseHeaderLayer;
    use tower_http::timeout::TimeoutLayer;

    /// A client that has not sent its whole request head by then is dropped (slowloris).
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Time to start a response; streaming the body afterwards is not limited, so a slow
    /// visitor can still download the weights.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    /// GET and HEAD have no body; anything bigger than this is refused with 413.
    pub const MAX_BODY: usize = 4096;
    /// Connections served at once; later ones wait in the listen backlog.
    pub const MAX_CONNECTIONS: usize = 256;

    pub async fn serve(root: &Path, port: u16) -> std::io::Result<()> {
        let root = root.canonicalize()?;
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        println!("serving {} at http://127.0.0.1:{}/", root.display(), listener.local_addr()?.port());
        let app = router(root);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors: wait instead of spinning.
                    eprintln!("serve: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    // A client may shut down its sending side right after its request (as
                    // `curl` and raw sockets do); without this hyper drops the answer.
                    .half_close(true)
                    .serve_connection(TokioIo::new(stream), service);
                // Broken connections are the client's business; nothing to report.
                let _ = conn.await;
                drop(permit);
            });
        }
    }

    fn router(root: PathBuf) -> Router {
        let files = ServeDir::new(&root).append_index_html_on_directories(true);
        Router::new()
            .fallback_service(files)
            .layer(middleware::from_fn_with_state(Arc::new(root), confine))
            .layer(RequestBodyLimitLayer::new(MAX_BODY))
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, RESPONSE_TIMEOUT))
            .layer(SetResponseHeaderLayer::overriding(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            ))
    }

    /// Answers 404 unless the request's path, with every symbolic link resolved, stays under
    /// `root`. `ServeDir` does the rest of the path checks (`..`, encoded separators).
    async fn confine(State(root): State<Arc<PathBuf>>, request: Request, next: Next) -> Response {
        let decoded = percent_encoding::percent_decode_str(request.uri().path()).decode_utf8();
        let Ok(path) = decoded else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let relative = path.trim_start_matches('/');
        // A path that does not exist is left to ServeDir, which answers 404 for it.
        if let Ok(real) = root.join(relative).canonicalize() {
            if !real.starts_with(root.as_path()) {
                return StatusCode::NOT_FOUND.into_response();
            }
        }
        next.run(request).await
    }
}
