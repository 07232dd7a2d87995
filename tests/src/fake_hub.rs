//! A local stand-in for the Hugging Face Hub, enough for hf-hub and `yangtuo::hub`: repo info
//! (`GET /api/models/{repo}/revision/{rev}` with `sha` and `siblings`), the file tree
//! (`GET /api/models/{repo}/tree/{rev}`), and files (`HEAD`/`GET /{repo}/resolve/{rev}/{file}`
//! with ETag, X-Repo-Commit, Content-Length and Range). A gated repo answers 401, a missing
//! one 404 (with the Hub's `X-Error-Code`s), and a file can be cut off mid-body once.
//!
//! std::net only: one thread per connection, `Connection: close` on every answer.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Clone)]
pub struct FakeRepo {
    pub commit: String,
    pub files: Vec<(String, Vec<u8>)>,
    pub gated: bool,
}

#[derive(Default)]
struct Shared {
    repos: HashMap<String, FakeRepo>,
    /// `(file, bytes)`: the next GET of `file` stops after `bytes` bytes of its body.
    cut: Option<(String, usize)>,
    /// `(file, bytes)`: the next GET of `file` sends `bytes` bytes, then nothing for 10 s.
    stall: Option<(String, usize)>,
    /// `METHOD path [range]` of every request, in order.
    log: Vec<String>,
    /// Answer every GET with the whole file, as a server without Range support does.
    ignore_ranges: bool,
}

pub struct FakeHub {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A 40-hex id for bytes (FNV-1a folded; a test stand-in for git's sha1).
pub fn oid(bytes: &[u8]) -> String {
    let mut out = String::new();
    for salt in 0u64..3 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out.truncate(40);
    out
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((sock, _)) => {
                            let shared = shared.clone();
                            std::thread::spawn(move || {
                                let _ = serve(sock, &shared);
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(std::time::Duration::from_millis(5))
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        FakeHub {
            port,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn add_repo(&self, id: &str, files: Vec<(String, Vec<u8>)>, gated: bool) {
        let commit = oid(id.as_bytes());
        self.shared.lock().unwrap().repos.insert(
            id.to_string(),
            FakeRepo {
                commit,
                files,
                gated,
            },
        );
    }

    pub fn repo(&self, id: &str) -> Option<FakeRepo> {
        self.shared.lock().unwrap().repos.get(id).cloned()
    }

    /// The next GET of `file` sends its first `after` bytes, then keeps the connection open
    /// and silent for 10 s (a stalled mirror) before closing it.
    pub fn stall_once(&self, file: &str, after: usize) {
        self.shared.lock().unwrap().stall = Some((file.to_string(), after));
    }

    /// The next GET of `file` sends only its first `after` bytes, then drops the connection.
    pub fn cut_once(&self, file: &str, after: usize) {
        self.shared.lock().unwrap().cut = Some((file.to_string(), after));
    }

    /// Whether Range headers are ignored (the whole file, 200) from now on.
    pub fn ignore_ranges(&self, on: bool) {
        self.shared.lock().unwrap().ignore_ranges = on;
    }

    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().unwrap().log.clone()
    }

    /// Close the port: later connections are refused.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.halt();
    }
}

struct Req {
    method: String,
    path: String,
    range: Option<(u64, Option<u64>)>,
}

fn read_request(sock: &TcpStream) -> std::io::Result<Req> {
    let mut r = BufReader::new(sock);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut range = None;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "range"
            && let Some(spec) = v.strip_prefix("bytes=")
        {
            let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
            range = Some((a.parse().unwrap_or(0), b.parse().ok()));
        }
        if k == "content-length" {
            length = v.parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok(Req {
        method,
        path,
        range,
    })
}

fn answer(
    sock: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    sock.write_all(out.as_bytes())?;
    if !head {
        sock.write_all(body)?;
    }
    sock.flush()
}

fn json_error(
    sock: &mut TcpStream,
    status: &str,
    code: &str,
    msg: &str,
    head: bool,
) -> std::io::Result<()> {
    let body = serde_json::json!({ "error": msg }).to_string();
    let headers = [
        ("Content-Type", "application/json".to_string()),
        ("X-Error-Code", code.to_string()),
        ("X-Error-Message", msg.to_string()),
    ];
    answer(sock, status, &headers, body.as_bytes(), head)
}

fn is_lfs(name: &str) -> bool {
    name.ends_with(".gguf") || name.ends_with(".safetensors")
}

fn serve(mut sock: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    let req = read_request(&sock)?;
    let head = req.method == "HEAD";
    let path = req.path.split('?').next().unwrap_or("").to_string();
    shared.lock().unwrap().log.push(format!(
        "{} {}{}",
        req.method,
        req.path,
        req.range
            .map(|(a, b)| format!(
                " bytes={a}-{}",
                b.map(|b| b.to_string()).unwrap_or_default()
            ))
            .unwrap_or_default()
    ));
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/models/{owner}/{name}[/revision/{rev} | /tree/{rev}]
    if segs.len() >= 4 && segs[0] == "api" && segs[1] == "models" {
        let id = format!("{}/{}", segs[2], segs[3]);
        let Some(repo) = shared.lock().unwrap().repos.get(&id).cloned() else {
            return json_error(
                &mut sock,
                "404 Not Found",
                "RepoNotFound",
                "Repository not found",
                head,
            );
        };
        let body = match segs.get(4).copied() {
            None | Some("revision") => {
                // like the Hub: a gated repo's info is public, its files are not
                let siblings: Vec<_> = repo
                    .files
                    .iter()
                    .map(|(n, _)| serde_json::json!({ "rfilename": n }))
                    .collect();
                serde_json::json!({ "id": id, "modelId": id, "sha": repo.commit, "private": false,
                                    "gated": if repo.gated { serde_json::json!("manual") } else { serde_json::json!(false) },
                                    "siblings": siblings })
            }
            Some("tree") => {
                let entries: Vec<_> = repo
                    .files
                    .iter()
                    .map(|(n, b)| {
                        let mut e = serde_json::json!({ "type": "file", "oid": oid(b), "size": b.len(), "path": n });
                        if is_lfs(n) {
                            e["lfs"] = serde_json::json!({ "oid": format!("{}{}", oid(b), &oid(n.as_bytes())[..24]), "size": b.len(), "pointerSize": 134 });
                        }
                        e
                    })
                    .collect();
                serde_json::json!(entries)
            }
            Some(_) => {
                return json_error(
                    &mut sock,
                    "404 Not Found",
                    "EntryNotFound",
                    "no such API",
                    head,
                );
            }
        };
        let headers = [("Content-Type", "application/json".to_string())];
        return answer(
            &mut sock,
            "200 OK",
            &headers,
            body.to_string().as_bytes(),
            head,
        );
    }
    // /{owner}/{name}/resolve/{rev}/{file...}
    if segs.len() >= 5 && segs[2] == "resolve" {
        let id = format!("{}/{}", segs[0], segs[1]);
        let file = segs[4..].join("/");
        let Some(repo) = shared.lock().unwrap().repos.get(&id).cloned() else {
            return json_error(
                &mut sock,
                "404 Not Found",
                "RepoNotFound",
                "Repository not found",
                head,
            );
        };
        if repo.gated {
            let msg = format!(
                "Access to model {id} is restricted. You must have access to it and be authenticated to access it."
            );
            return json_error(&mut sock, "401 Unauthorized", "GatedRepo", &msg, head);
        }
        let Some((_, bytes)) = repo.files.iter().find(|(n, _)| *n == file) else {
            return json_error(
                &mut sock,
                "404 Not Found",
                "EntryNotFound",
                &format!("{file} does not exist"),
                head,
            );
        };
        let len = bytes.len() as u64;
        let mut headers = vec![
            ("ETag", format!("\"{}\"", oid(bytes))),
            ("X-Repo-Commit", repo.commit.clone()),
            ("Accept-Ranges", "bytes".to_string()),
            ("Content-Type", "application/octet-stream".to_string()),
        ];
        let ignore = shared.lock().unwrap().ignore_ranges;
        let (status, body) = match req.range {
            Some((a, b)) if !head && !ignore && a < len => {
                let end = b.map(|b| (b + 1).min(len)).unwrap_or(len);
                headers.push(("Content-Range", format!("bytes {a}-{}/{len}", end - 1)));
                ("206 Partial Content", &bytes[a as usize..end as usize])
            }
            _ => ("200 OK", &bytes[..]),
        };
        let (cut, stall) = {
            let mut s = shared.lock().unwrap();
            let take = |slot: &mut Option<(String, usize)>| match slot {
                Some((f, after)) if !head && *f == file => {
                    let after = (*after).min(body.len());
                    *slot = None;
                    Some(after)
                }
                _ => None,
            };
            let cut = take(&mut s.cut);
            (cut, take(&mut s.stall))
        };
        headers.push(("Content-Length", body.len().to_string()));
        if let Some(after) = cut.or(stall) {
            answer(&mut sock, status, &headers, &body[..after], false)?;
            if stall.is_some() {
                std::thread::sleep(std::time::Duration::from_secs(10));
            }
            let _ = sock.shutdown(Shutdown::Both);
            return Ok(());
        }
        return answer(&mut sock, status, &headers, body, head);
    }
    json_error(
        &mut sock,
        "404 Not Found",
        "EntryNotFound",
        "not found",
        head,
    )
}
