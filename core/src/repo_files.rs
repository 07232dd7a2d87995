//! Which files of a Hugging Face repo make the model: `owner/name[:QUANT]` parsed, one GGUF
//! picked by its quant, or a safetensors folder's files. Pure functions over a file list,
//! so the native hub (hub.rs) and the browser (which lists a repo through the Hub's HTTP
//! API) choose alike.

use crate::{Error, Result};

/// `owner/name` with an optional `:QUANT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    pub repo: String,
    pub quant: Option<String>,
}

impl RepoSpec {
    /// `owner/name[:QUANT]`, or `None` for anything that does not look like a repo id.
    pub fn parse(spec: &str) -> Option<RepoSpec> {
        let (repo, quant) = match spec.split_once(':') {
            Some((r, q)) => (r, Some(q)),
            None => (spec, None),
        };
        let part = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && !s.starts_with(['-', '.'])
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let (owner, name) = repo.split_once('/')?;
        if !part(owner) || !part(name) {
            return None;
        }
        if let Some(q) = quant
            && (q.is_empty()
                || !q
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
        {
            return None;
        }
        Some(RepoSpec {
            repo: repo.to_string(),
            quant: quant.map(str::to_string),
        })
    }

    /// The repo's folder in the cache: `models--owner--name`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// What a repo id without a quant resolves to.
pub enum Wanted {
    /// Files of a safetensors folder (the shards of an index come after the index).
    Folder(Vec<String>),
    /// A repo whose only weights are one GGUF file.
    Gguf(String),
}

/// Config, tokenizer and safetensors weights of a repo; a clear error for `.bin`-only or
/// GGUF-only repos.
fn safetensors_files(spec: &str, files: &[&str]) -> Result<Wanted> {
    let top: Vec<&str> = files.iter().copied().filter(|p| !p.contains('/')).collect();
    let has = |n: &str| top.contains(&n);
    let st: Vec<&str> = top
        .iter()
        .copied()
        .filter(|p| p.ends_with(".safetensors"))
        .collect();
    let ggufs: Vec<&str> = files.iter().copied().filter(|p| is_gguf(p)).collect();
    if st.is_empty() && !has("model.safetensors.index.json") {
        if ggufs.len() == 1 {
            return Ok(Wanted::Gguf(ggufs[0].to_string()));
        }
        if !ggufs.is_empty() {
            return Err(Error::load(
                spec,
                format!(
                    "this repo holds several GGUF files; pick one with `{spec}:QUANT`, QUANT one of: {}",
                    quant_list(&ggufs)
                ),
            ));
        }
        let bins = top
            .iter()
            .any(|p| p.ends_with(".bin") || p.ends_with(".pth") || p.ends_with(".pt"));
        return Err(Error::load(
            spec,
            if bins {
                "this repo has only PyTorch .bin/.pth weights, which yangtuo does not load (they can run code when \
                 unpickled); use a repo with .safetensors or .gguf weights"
                    .to_string()
            } else {
                "this repo has no .safetensors or .gguf weights".to_string()
            },
        ));
    }
    if !has("config.json") {
        return Err(Error::load(
            spec,
            "this repo has no config.json at its top level",
        ));
    }
    let mut wanted: Vec<String> = [
        "config.json",
        "generation_config.json",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "quantize_config.json",
    ]
    .into_iter()
    .filter(|n| has(n))
    .map(str::to_string)
    .collect();
    if has("model.safetensors.index.json") {
        wanted.push("model.safetensors.index.json".into());
    } else if has("model.safetensors") {
        wanted.push("model.safetensors".into());
    } else {
        wanted.extend(st.iter().map(|s| s.to_string()));
    }
    Ok(Wanted::Folder(wanted))
}

/// The files to fetch for `repo`, given every path the repo holds.
pub fn choose(spec: &str, repo: &RepoSpec, paths: &[&str]) -> Result<Wanted> {
    match &repo.quant {
        Some(q) => pick_gguf(spec, q, paths.iter().copied()).map(|f| Wanted::Gguf(f.to_string())),
        None => safetensors_files(spec, paths),
    }
}

pub fn is_gguf(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".gguf")
}

/// The name parts of a GGUF file: `llama-2-7b-chat.Q4_K_M.gguf` → llama, 2, 7b, chat, Q4_K_M.
fn name_parts(path: &str) -> impl Iterator<Item = &str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = &name[..name.len().saturating_sub(5)];
    stem.split(['.', '-'])
}

/// The quant part of a GGUF name (`Q4_K_M`, `q8_0`, `F16`, `IQ4_XS`), if it has one.
fn quant_of(path: &str) -> Option<&str> {
    name_parts(path)
        .filter(|p| {
            let l = p.to_ascii_lowercase();
            let l = l.strip_prefix('i').unwrap_or(&l);
            (l.starts_with('q') && l[1..].starts_with(|c: char| c.is_ascii_digit()))
                || ["f16", "f32", "bf16"].contains(&l)
        })
        .last()
}

fn quant_list(ggufs: &[&str]) -> String {
    ggufs
        .iter()
        .map(|g| match quant_of(g) {
            Some(q) => format!("{q} ({g})"),
            None => g.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The GGUF file whose name has `quant` among its parts (case-insensitive; `Q4_K_M` in
/// `llama-2-7b-chat.Q4_K_M.gguf`, `q4_k-im` in `ggml-model-q4_k-im.gguf`). Where several
/// match, the one with the fewest parts (`ggml-model-q4_k.gguf` over `ggml-model-q4_k-im.gguf`).
pub fn pick_gguf<'a>(
    spec: &str,
    quant: &str,
    files: impl Iterator<Item = &'a str>,
) -> Result<&'a str> {
    let ggufs: Vec<&str> = files.filter(|p| is_gguf(p)).collect();
    let want: Vec<&str> = quant.split(['.', '-']).collect();
    let has = |g: &str| {
        let parts: Vec<&str> = name_parts(g).collect();
        parts
            .windows(want.len())
            .any(|w| w.iter().zip(&want).all(|(a, b)| a.eq_ignore_ascii_case(b)))
    };
    let mut hits: Vec<&str> = ggufs.iter().copied().filter(|g| has(g)).collect();
    if let Some(fewest) = hits.iter().map(|g| name_parts(g).count()).min() {
        hits.retain(|g| name_parts(g).count() == fewest);
    }
    match hits.as_slice() {
        [one] => Ok(one),
        [] if ggufs.is_empty() => Err(Error::load(
            spec,
            "this repo has no GGUF files; drop the `:QUANT` to load its safetensors",
        )),
        [] => Err(Error::load(
            spec,
            format!(
                "no GGUF file for quant `{quant}`; the repo has: {}",
                quant_list(&ggufs)
            ),
        )),
        many => Err(Error::load(
            spec,
            format!(
                "several GGUF files match `{quant}` ({}); split GGUF files are not supported",
                many.join(", ")
            ),
        )),
    }
}

/// A browser's failed request to a hub (`endpoint`, Hugging Face's or a mirror's) for
/// `repo`'s file list (`file` None) or one of its files, as the error to show.
pub fn web_http_error(
    spec: &str,
    repo: &RepoSpec,
    file: Option<&str>,
    status: u16,
    endpoint: &str,
) -> Error {
    let r = &repo.repo;
    let msg = match (status, file) {
        (404, None) => format!(
            "{endpoint} has no model repo `{r}` (HTTP 404); check the spelling (owner/name, as on the model's page)"
        ),
        (404, Some(f)) => format!("the repo `{r}` has no file `{f}` (HTTP 404)"),
        (401 | 403, _) => format!(
            "`{r}` is gated or private (HTTP {status}): a web page loads only public repos; accept its license on \
             https://huggingface.co/{r}, download the files with that account and serve them with your page"
        ),
        (429, _) => format!("{endpoint} rate-limits this client (HTTP 429); wait a minute"),
        (s, Some(f)) => format!("`{f}` of `{r}`: HTTP {s} from {endpoint}"),
        (s, None) => format!("`{r}`: HTTP {s} from {endpoint}"),
    };
    Error::load(spec, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_ids() {
        let p = |s| RepoSpec::parse(s);
        assert_eq!(
            p("meta-llama/Llama-2-7b-chat-hf"),
            Some(RepoSpec {
                repo: "meta-llama/Llama-2-7b-chat-hf".into(),
                quant: None
            })
        );
        assert_eq!(
            p("TheBloke/Llama-2-7B-Chat-GGUF:Q4_K_M"),
            Some(RepoSpec {
                repo: "TheBloke/Llama-2-7B-Chat-GGUF".into(),
                quant: Some("Q4_K_M".into())
            })
        );
        assert_eq!(
            p("hfl/x-gguf:q4_k-im").unwrap().quant.as_deref(),
            Some("q4_k-im")
        );
        for not in [
            "model",
            "./a/b",
            "/abs/x",
            "a/b/c",
            "C:/models/x",
            "a/",
            "/b",
            "../x",
            "a/b:",
            "a/b:Q4 K",
            "~/m/x",
            "a b/c",
        ] {
            assert_eq!(p(not), None, "{not}");
        }
    }

    #[test]
    fn picks_gguf_by_quant() {
        let files = [
            "README.md",
            "llama-2-7b-chat.Q4_K_M.gguf",
            "llama-2-7b-chat.Q4_K_S.gguf",
            "llama-2-7b-chat.Q8_0.gguf",
            "ggml-model-q4_0.gguf",
        ];
        let pick = |q| pick_gguf("x/y", q, files.iter().copied());
        assert_eq!(pick("q4_k_m").unwrap(), "llama-2-7b-chat.Q4_K_M.gguf");
        assert_eq!(pick("Q8_0").unwrap(), "llama-2-7b-chat.Q8_0.gguf");
        assert_eq!(pick("Q4_0").unwrap(), "ggml-model-q4_0.gguf");
        let e = pick("Q5_K_M").unwrap_err().to_string();
        assert!(
            e.contains("Q4_K_M (llama-2-7b-chat.Q4_K_M.gguf)") && e.contains("Q8_0"),
            "{e}"
        );
        // Q4_K is not a part of Q4_K_M's name
        assert!(pick("Q4_K").is_err());
        // HFL's naming, with imatrix variants; the plain one unless asked
        let hfl = [
            "ggml-model-q4_k.gguf",
            "ggml-model-q4_k-im.gguf",
            "ggml-model-q8_0.gguf",
        ];
        let pick = |q| pick_gguf("x/y", q, hfl.iter().copied());
        assert_eq!(pick("Q4_K").unwrap(), "ggml-model-q4_k.gguf");
        assert_eq!(pick("q4_k-im").unwrap(), "ggml-model-q4_k-im.gguf");
        // split files stay ambiguous
        let split = ["m.Q8_0-00001-of-00002.gguf", "m.Q8_0-00002-of-00002.gguf"];
        assert!(
            pick_gguf("x/y", "Q8_0", split.iter().copied())
                .unwrap_err()
                .to_string()
                .contains("split")
        );
    }
}
