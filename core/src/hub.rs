//! Models by name: a Hugging Face repo id instead of a path.
//!
//! - `owner/name`: a safetensors repo (config.json, tokenizer files, `model.safetensors` or
//!   the index and its shards; never `*.bin`), resolved to its snapshot folder.
//! - `owner/name:QUANT`: one GGUF file of the repo, picked by its quant name
//!   (`Q4_K_M` picks `llama-2-7b-chat.Q4_K_M.gguf`; case-insensitive).
//!
//! An existing local path always wins. Files go into the standard Hugging Face cache, laid
//! out as Python's `huggingface_hub` does, so both share downloads: `HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, then
//! `models--owner--name/{blobs/<etag>, snapshots/<commit>/<file> → blob, refs/main}`.
//! `HF_ENDPOINT` picks a mirror (`https://hf-mirror.com`), `HF_TOKEN` opens gated repos, and
//! `HF_HUB_OFFLINE=1` means no network at all: the cache, or a clear error. A hub that cannot
//! be reached falls back to the cache too.
//!
//! hf-hub asks the Hub for the commit and the file list and streams the bytes. It does not
//! resume, so this module does: a download writes `blobs/<etag>.incomplete` and continues it
//! with an HTTP Range request, after a dropped connection and in a later run.

use crate::repo_files::{RepoSpec, Wanted, choose};
use crate::{Error, Result};
use futures_util::StreamExt;
use hf_hub::repository::{HFRepository, RepoTreeEntry, RepoTypeModel};
use hf_hub::{HFClient, HFError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

/// Download progress of one file.
#[derive(Debug, Clone)]
pub struct HubProgress {
    pub file: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// The Hugging Face hub cache folder, found as `huggingface_hub` finds it: `HF_HUB_CACHE`
/// (or the older `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .unwrap_or_else(|| hf_home().join("hub"))
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|x| x.join("huggingface")))
        .unwrap_or_else(|| {
            var("HOME")
                .or_else(|| var("USERPROFILE"))
                .unwrap_or_else(std::env::temp_dir)
                .join(".cache")
                .join("huggingface")
        })
}

/// A token hf-hub will send: `HF_TOKEN`, or the file `huggingface-cli login` writes.
fn has_token() -> bool {
    std::env::var("HF_TOKEN").is_ok_and(|t| !t.trim().is_empty())
        || std::env::var_os("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home().join("token"))
            .is_file()
}

/// `HF_HUB_OFFLINE` set to 1/true/yes/on.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// A model spec to a local path: an existing path as is; a repo id through the cache,
/// downloading what is missing (with `progress` per chunk); anything else as is (the
/// loader then says that it does not exist).
pub fn resolve_model(spec: &str, progress: &mut dyn FnMut(HubProgress)) -> Result<PathBuf> {
    let local = Path::new(spec);
    if local.exists() {
        return Ok(local.to_path_buf());
    }
    let Some(repo) = RepoSpec::parse(spec) else {
        return Ok(local.to_path_buf());
    };
    let cache = cache_dir();
    if offline() {
        return cached(&cache, &repo).ok_or_else(|| {
            Error::load(
                spec,
                format!(
                    "not a local path, and HF_HUB_OFFLINE is set: the Hugging Face cache ({}) does not hold it; \
                     run once with network access (or unset HF_HUB_OFFLINE) to download it",
                    cache.display()
                ),
            )
        });
    }
    // The network runs on its own thread with its own tokio runtime (the caller may already be
    // inside one); progress comes back over a channel so the callback stays on this thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::scope(|s| {
        let worker = s.spawn(|| fetch_blocking(spec, &repo, &cache, tx));
        for p in rx {
            progress(p);
        }
        worker.join()
    });
    let r = joined.map_err(|_| Error::load(spec, "the download thread panicked"))?;
    match r {
        Ok(path) => Ok(path),
        Err(Fail::Unreachable(why)) => match cached(&cache, &repo) {
            Some(path) => {
                log::warn!("cannot reach the Hugging Face Hub ({why}); using the cached `{spec}`");
                Ok(path)
            }
            None => Err(Error::load(
                spec,
                format!(
                    "cannot reach the Hugging Face Hub at {} ({why}), and this model is neither a local path nor in the cache ({}). \
                     Check the network or proxy; in mainland China set HF_ENDPOINT=https://hf-mirror.com",
                    endpoint(),
                    cache.display()
                ),
            )),
        },
        Err(Fail::Error(e)) => Err(e),
    }
}

/// The Hub endpoint in use (`HF_ENDPOINT`, else huggingface.co).
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .unwrap_or_else(|_| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

enum Fail {
    /// No connection to the Hub: the cache may still serve.
    Unreachable(String),
    Error(Error),
}

fn fetch_blocking(
    spec: &str,
    repo: &RepoSpec,
    cache: &Path,
    tx: Sender<HubProgress>,
) -> Result<PathBuf, Fail> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            Fail::Error(Error::load(
                spec,
                format!("cannot start the download runtime: {e}"),
            ))
        })?;
    rt.block_on(fetch(spec, repo, cache, &tx))
}

/// A file of the repo at the resolved commit.
#[derive(Debug, Clone)]
struct Remote {
    path: String,
    size: u64,
    etag: String,
}

async fn fetch(
    spec: &str,
    repo: &RepoSpec,
    cache: &Path,
    tx: &Sender<HubProgress>,
) -> Result<PathBuf, Fail> {
    let fail = |e: HFError, file: Option<&str>| classify(spec, repo, file, e);
    let client = HFClient::builder()
        .cache_dir(cache)
        .build()
        .map_err(|e| fail(e, None))?;
    let (owner, name) = hf_hub::split_id(&repo.repo);
    let handle = client.model(owner, name);
    let limit = stall_limit();
    let silent = || {
        Fail::Unreachable(format!(
            "{} sent nothing for {} s",
            endpoint(),
            limit.as_secs()
        ))
    };
    let info = tokio::time::timeout(limit, handle.info().revision("main").send())
        .await
        .map_err(|_| silent())?
        .map_err(|e| fail(e, None))?;
    let commit = info
        .sha
        .ok_or_else(|| Fail::Error(Error::load(spec, "the Hub sent no commit for `main`")))?;
    let tree = handle
        .list_tree()
        .revision(commit.clone())
        .recursive(true)
        .send()
        .map_err(|e| fail(e, None))?;
    let mut files = vec![];
    futures_util::pin_mut!(tree);
    while let Some(entry) = tokio::time::timeout(limit, tree.next())
        .await
        .map_err(|_| silent())?
    {
        if let RepoTreeEntry::File {
            path,
            size,
            oid,
            lfs,
            ..
        } = entry.map_err(|e| fail(e, None))?
        {
            let etag = lfs.and_then(|l| l.sha256).unwrap_or(oid);
            files.push(Remote { path, size, etag });
        }
    }
    let repo_dir = cache.join(repo.cache_folder());
    let snapshot = repo_dir.join("snapshots").join(&commit);
    let get = |f: Remote| {
        let (handle, repo_dir, commit) = (&handle, &repo_dir, &commit);
        async move {
            download(handle, repo_dir, commit, &f, tx)
                .await
                .map_err(|e| e.into_fail(spec, repo, &f.path))
        }
    };
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let target = match choose(spec, repo, &paths).map_err(Fail::Error)? {
        Wanted::Gguf(file) => {
            let f = files
                .iter()
                .find(|f| f.path == file)
                .cloned()
                .expect("picked from the list");
            get(f).await?;
            snapshot.join(file)
        }
        Wanted::Folder(names) => {
            for n in names {
                let f = files
                    .iter()
                    .find(|f| f.path == n)
                    .cloned()
                    .expect("picked from the list");
                get(f).await?;
            }
            // a sharded checkpoint: the index names the shards
            let index = snapshot.join("model.safetensors.index.json");
            if index.exists() {
                for shard in index_shards(&index).map_err(Fail::Error)? {
                    let f = files
                        .iter()
                        .find(|f| f.path == shard)
                        .cloned()
                        .ok_or_else(|| {
                            Fail::Error(Error::load(
                                spec,
                                format!("the index names `{shard}`, which the repo does not have"),
                            ))
                        })?;
                    get(f).await?;
                }
            }
            snapshot.clone()
        }
    };
    let refs = repo_dir.join("refs");
    std::fs::create_dir_all(&refs)
        .and_then(|_| std::fs::write(refs.join("main"), &commit))
        .map_err(|e| Fail::Error(Error::io(&refs, e)))?;
    Ok(target)
}

fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::load(index, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::load(index, "missing `weight_map`"))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// What the cache holds for `repo` at `refs/main`, if complete enough to load.
fn cached(cache: &Path, repo: &RepoSpec) -> Option<PathBuf> {
    let dir = cache.join(repo.cache_folder());
    let commit = std::fs::read_to_string(dir.join("refs").join("main")).ok()?;
    let snap = dir.join("snapshots").join(commit.trim());
    let mut names = vec![];
    walk(&snap, &snap, &mut names);
    if let Some(q) = &repo.quant {
        return crate::repo_files::pick_gguf("", q, names.iter().map(String::as_str))
            .ok()
            .map(|f| snap.join(f));
    }
    let has = |n: &str| snap.join(n).exists();
    if has("config.json") {
        let index = snap.join("model.safetensors.index.json");
        let complete = if index.exists() {
            index_shards(&index).is_ok_and(|s| s.iter().all(|f| has(f)))
        } else {
            names.iter().any(|n| n.ends_with(".safetensors"))
        };
        return complete.then_some(snap);
    }
    match names
        .iter()
        .filter(|n| crate::repo_files::is_gguf(n))
        .collect::<Vec<_>>()
        .as_slice()
    {
        [one] => Some(snap.join(one)),
        _ => None,
    }
}

/// Relative paths of the files under `dir` that exist (a dangling link does not count).
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if p.is_file()
            && let Ok(rel) = p.strip_prefix(root)
        {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// A failed download of one file.
enum DlError {
    Hub(HFError),
    Io(PathBuf, std::io::Error),
    Other(String),
}

impl DlError {
    fn into_fail(self, spec: &str, repo: &RepoSpec, file: &str) -> Fail {
        match self {
            DlError::Hub(e) => classify(spec, repo, Some(file), e),
            DlError::Io(p, e) => Fail::Error(Error::io(p, e)),
            DlError::Other(m) => Fail::Error(Error::load(spec, format!("{file}: {m}"))),
        }
    }
}

/// Dropped connections tolerated per file, each resumed where it stopped.
const RESUMES: usize = 5;

/// How long the Hub may send nothing before a request counts as dropped (a download then
/// resumes where it stopped; metadata falls back to the cache): `YANGTUO_HUB_TIMEOUT`
/// seconds, default 60. Mirrors do stall, and a stalled connection otherwise waits forever.
fn stall_limit() -> std::time::Duration {
    let secs = std::env::var("YANGTUO_HUB_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0);
    std::time::Duration::from_secs_f64(secs.unwrap_or(60.0))
}

/// One file into `blobs/<etag>` (through `.incomplete`, resuming what is there) and its
/// snapshot link.
async fn download(
    handle: &HFRepository<RepoTypeModel>,
    repo_dir: &Path,
    commit: &str,
    f: &Remote,
    tx: &Sender<HubProgress>,
) -> Result<(), DlError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| DlError::Io(p, e)
    };
    // at most one report per MiB, and the first and last
    let last = std::cell::Cell::new(None::<u64>);
    let report = |done: u64| {
        if last
            .get()
            .is_none_or(|l| done < l || done - l >= 1 << 20 || done == f.size)
        {
            last.set(Some(done));
            let _ = tx.send(HubProgress {
                file: f.path.clone(),
                done_bytes: done,
                total_bytes: f.size,
            });
        }
    };
    let limit = stall_limit();
    let snap = repo_dir.join("snapshots").join(commit).join(&f.path);
    if std::fs::metadata(&snap).is_ok_and(|m| m.len() == f.size) {
        return Ok(());
    }
    let blobs = repo_dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let blob = blobs.join(&f.etag);
    if !std::fs::metadata(&blob).is_ok_and(|m| m.len() == f.size) {
        let part = blobs.join(format!("{}.incomplete", f.etag));
        let mut drops = 0;
        loop {
            let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if have > f.size {
                have = 0;
            }
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&part)
                .map_err(io(&part))?;
            out.set_len(have).map_err(io(&part))?;
            report(have);
            if have == f.size {
                break;
            }
            if have > 0 {
                log::info!("{}: resuming at {have} of {} bytes", f.path, f.size);
            }
            let req = handle
                .download_file_stream()
                .filename(f.path.clone())
                .revision(commit.to_string());
            let sent = if have > 0 {
                tokio::time::timeout(limit, req.range(have..f.size).send()).await
            } else {
                tokio::time::timeout(limit, req.send()).await
            };
            let mut stream = match sent {
                Ok(Ok((_, s))) => s,
                Err(_) if drops < RESUMES => {
                    drops += 1;
                    log::warn!(
                        "{}: the Hub sent nothing for {} s; asking again",
                        f.path,
                        limit.as_secs()
                    );
                    continue;
                }
                Err(_) => {
                    return Err(DlError::Other(format!(
                        "the Hub sent nothing for {} s, {RESUMES} times; run again to resume at {have} of {} bytes",
                        limit.as_secs(),
                        f.size
                    )));
                }
                Ok(Err(e)) if transient(&e) && drops < RESUMES => {
                    drops += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 * drops as u64)).await;
                    continue;
                }
                Ok(Err(e)) => return Err(DlError::Hub(e)),
            };
            let mut done = have;
            let mut dropped = None;
            loop {
                let chunk = match tokio::time::timeout(limit, stream.next()).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(_) => {
                        dropped = Some(format!("no data for {} s", limit.as_secs()));
                        break;
                    }
                };
                match chunk {
                    Ok(bytes) if done + bytes.len() as u64 > f.size => {
                        // more than the file holds: the server ignored the Range (or the
                        // listing is off); start again from the first byte
                        out.set_len(0).map_err(io(&part))?;
                        done = 0;
                        dropped = Some(format!(
                            "the server sent more than the {} bytes listed",
                            f.size
                        ));
                        break;
                    }
                    Ok(bytes) => {
                        out.write_all(&bytes).map_err(io(&part))?;
                        done += bytes.len() as u64;
                        report(done);
                    }
                    Err(e) => {
                        dropped = Some(e.to_string());
                        break;
                    }
                }
            }
            out.flush().map_err(io(&part))?;
            drop(out);
            if done == f.size {
                break;
            }
            let why = dropped.unwrap_or_else(|| "the connection closed early".into());
            drops += 1;
            if drops > RESUMES {
                return Err(DlError::Other(format!(
                    "download stopped at {done} of {} bytes ({why}); run again to resume it",
                    f.size
                )));
            }
            log::warn!(
                "{}: download interrupted at {done} of {} bytes ({why}); resuming",
                f.path,
                f.size
            );
        }
        std::fs::rename(&part, &blob).map_err(io(&blob))?;
    }
    link(&blob, &snap, &f.path).map_err(io(&snap))?;
    report(f.size);
    Ok(())
}

/// `snapshots/<commit>/<path>` → `../../blobs/<etag>` (relative, as huggingface_hub does).
fn link(blob: &Path, snap: &Path, path: &str) -> std::io::Result<()> {
    if let Some(parent) = snap.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if snap.symlink_metadata().is_ok() {
        std::fs::remove_file(snap)?;
    }
    #[cfg(unix)]
    {
        let up = "../".repeat(2 + path.matches('/').count());
        let target = PathBuf::from(up)
            .join("blobs")
            .join(blob.file_name().expect("a blob name"));
        if std::os::unix::fs::symlink(&target, snap).is_ok() {
            return Ok(());
        }
    }
    let _ = path;
    // no links (Windows without developer mode): the file moves into the snapshot, as
    // huggingface_hub does
    std::fs::rename(blob, snap).or_else(|_| std::fs::copy(blob, snap).map(|_| ()))
}

fn transient(e: &HFError) -> bool {
    match e {
        HFError::Request { source, .. } => {
            source.is_timeout() || source.is_connect() || source.is_request() || source.is_body()
        }
        HFError::Http { context } => matches!(context.status.as_u16(), 500 | 502 | 503 | 504),
        _ => false,
    }
}

/// hf-hub's error as a `ModelLoad` error that says what to do.
fn classify(spec: &str, repo: &RepoSpec, file: Option<&str>, e: HFError) -> Fail {
    let r = &repo.repo;
    let what = file
        .map(|f| format!("`{f}` of `{r}`"))
        .unwrap_or_else(|| format!("`{r}`"));
    let not_found = || {
        Error::load(
            spec,
            match file {
                Some(f) => format!("the Hub repo `{r}` has no file `{f}` (HTTP 404)"),
                None => format!(
                    "not a local file or folder, and {} has no model repo `{r}` (HTTP 404); \
                     check the spelling (owner/name, as on the model's page); a private repo needs HF_TOKEN",
                    endpoint()
                ),
            },
        )
    };
    let gated = |status: u16, msg: String| {
        let help = if has_token() {
            format!(
                "your token (HF_TOKEN or `huggingface-cli login`) has no access to it: accept the license on https://huggingface.co/{r} \
                 with the account of that token and wait for the approval"
            )
        } else {
            format!(
                "it is gated or private: accept the license on https://huggingface.co/{r}, create a read token at \
                 https://huggingface.co/settings/tokens and set HF_TOKEN=hf_..."
            )
        };
        Error::load(
            spec,
            format!("`{r}` needs access (HTTP {status}{msg}): {help}"),
        )
    };
    let detail = |m: &Option<String>| {
        m.as_deref()
            .filter(|m| !m.is_empty())
            .map(|m| format!(", {m}"))
            .unwrap_or_default()
    };
    Fail::Error(match e {
        HFError::RepoNotFound { .. }
        | HFError::EntryNotFound { .. }
        | HFError::RevisionNotFound { .. } => not_found(),
        HFError::AuthRequired { context } | HFError::Forbidden { context } => {
            // the Hub answers 401 for a repo that does not exist, too, unless one is logged in
            if context.error_code.as_deref() == Some("RepoNotFound") {
                not_found()
            } else {
                gated(context.status.as_u16(), detail(&context.server_message))
            }
        }
        HFError::Request { ref source, .. } if source.is_connect() || source.is_timeout() => {
            // the innermost cause says it best ("Connection refused", a DNS failure)
            let mut why = source.to_string();
            let mut s: Option<&dyn std::error::Error> = std::error::Error::source(source);
            while let Some(inner) = s {
                why = inner.to_string();
                s = inner.source();
            }
            return Fail::Unreachable(why);
        }
        HFError::RateLimited { .. } => Error::load(
            spec,
            format!("the Hub rate-limits this client ({e}); wait a minute, or set HF_TOKEN"),
        ),
        other => Error::load(spec, format!("{what}: {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_miss_is_a_clear_error() {
        // a repo that no cache holds; offline is read from the environment, so only check `cached`
        let dir = std::env::temp_dir().join(format!("yangtuo-hub-empty-{}", std::process::id()));
        assert!(cached(&dir, &RepoSpec::parse("nobody/nothing").unwrap()).is_none());
    }
}
