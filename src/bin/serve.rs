//! A minimal static file server for the playground: `serve [DIR] [PORT]` serves DIR
//! (default `www`) on 127.0.0.1:PORT (default 8080), with the MIME types browsers insist on
//! (`application/wasm` for streaming compilation, `text/javascript` for modules).
//! GET and HEAD only; no directory listings; nothing outside DIR is reachable.

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
    if let Err(e) = native::serve(&root, port) {
        eprintln!("serve: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::{Component, Path, PathBuf};

    pub fn serve(root: &Path, port: u16) -> std::io::Result<()> {
        let root = root.canonicalize()?;
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        println!("serving {} at http://127.0.0.1:{}/", root.display(), listener.local_addr()?.port());
        for stream in listener.incoming() {
            let root = root.clone();
            match stream {
                Ok(s) => {
                    std::thread::spawn(move || {
                        if let Err(e) = handle(s, &root) {
                            eprintln!("serve: {e}");
                        }
                    });
                }
                Err(e) => eprintln!("serve: {e}"),
            }
        }
        Ok(())
    }

    fn handle(mut stream: TcpStream, root: &Path) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request = String::new();
        reader.read_line(&mut request)?;
        // Drain the headers; nothing in them changes the answer.
        let mut line = String::new();
        while reader.read_line(&mut line)? > 2 {
            line.clear();
        }
        let mut parts = request.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        if method != "GET" && method != "HEAD" {
            return respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                b"method not allowed\n",
                true,
            );
        }
        let path = target.split(['?', '#']).next().unwrap_or("/");
        let Some(file) = resolve(root, &percent_decode(path)) else {
            return respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", true);
        };
        match std::fs::read(&file) {
            Ok(body) => respond(&mut stream, "200 OK", mime(&file), &body, method == "GET"),
            Err(_) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", true),
        }
    }

    /// Maps a URL path to a file under `root`, refusing `..` and anything outside it.
    fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
        let mut out = root.to_path_buf();
        for c in Path::new(path.trim_start_matches('/')).components() {
            match c {
                Component::Normal(p) => out.push(p),
                Component::CurDir => {}
                _ => return None,
            }
        }
        if out.is_dir() {
            out.push("index.html");
        }
        let real = out.canonicalize().ok()?;
        (real.starts_with(root) && real.is_file()).then_some(real)
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(v) = u8::from_str_radix(hex, 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn mime(path: &Path) -> &'static str {
        match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "html" => "text/html; charset=utf-8",
            "js" | "mjs" => "text/javascript; charset=utf-8",
            "wasm" => "application/wasm",
            "json" => "application/json",
            "css" => "text/css; charset=utf-8",
            "png" => "image/png",
            "svg" => "image/svg+xml",
            "md" => "text/markdown; charset=utf-8",
            _ => "application/octet-stream",
        }
    }

    fn respond(
        stream: &mut TcpStream,
        status: &str,
        mime: &str,
        body: &[u8],
        with_body: bool,
    ) -> std::io::Result<()> {
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {mime}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        if with_body {
            stream.write_all(body)?;
        }
        stream.flush()
    }
}
