//! `yangtuo quantize IN OUT.gguf --type q4_0|q8_0|q4_k`: a Hugging Face folder (or a GGUF)
//! into a GGUF that llama.cpp reads, one tensor at a time.

use crate::args::parse_format;
use std::path::PathBuf;
use yangtuo::tokenizer::{PieceType, Tokenizer};
use yangtuo::weights::gguf::{
    GgufTensorSpec, GgufTokenizer, GgufWriter, llama_file_type, permute_rows_for_gguf,
};
use yangtuo::weights::quantize::quantize_weight;
use yangtuo::weights::source::ModelFiles;
use yangtuo::weights::{LayerTensor, RopeStyle, TensorId, WeightFormat};
use yangtuo::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Model folder (config.json + safetensors + tokenizer) or .gguf file.
    input: PathBuf,
    /// Output .gguf file (written to a temporary name and renamed when complete).
    output: PathBuf,
    /// q4_0 | q8_0 | q4_k | q6_k | f16
    #[arg(long = "type", short = 't')]
    ty: String,
}

/// The target format of one tensor: norms stay f32, matrices take the requested type when
/// their rows are whole blocks of it.
fn target(id: TensorId, cols: usize, want: WeightFormat) -> WeightFormat {
    if id.is_vector() {
        WeightFormat::F32
    } else if cols % want.block_elems() == 0 {
        want
    } else {
        WeightFormat::F16
    }
}

fn vocab(tok: &Tokenizer) -> Option<GgufTokenizer> {
    let Tokenizer::SentencePiece(sp) = tok else {
        return None;
    };
    let n = sp.vocab_size() as u32;
    Some(GgufTokenizer {
        model: "llama".into(),
        tokens: (0..n)
            .map(|i| sp.id_to_piece(i).unwrap_or_default().to_string())
            .collect(),
        scores: Some((0..n).map(|i| sp.score(i).unwrap_or(0.0)).collect()),
        token_types: Some(
            (0..n)
                .map(|i| sp.piece_type(i).unwrap_or(PieceType::Normal) as i32)
                .collect(),
        ),
        bos_id: sp.bos_id(),
        eos_id: sp.eos_id(),
        unk_id: Some(sp.unk_id()),
        pad_id: None,
        add_bos: Some(true),
        add_eos: Some(false),
    })
}

pub fn run(a: Args) -> Result<()> {
    let want = parse_format(&a.ty, "type")?;
    if !want.is_ggml() {
        return Err(Error::arg(
            "type",
            "choose a GGUF type: q4_0, q8_0, q4_k, q6_k or f16",
        ));
    }
    let files = ModelFiles::open(&a.input)?;
    let c = files.config.clone();
    let chat = yangtuo::ChatFormat::of_files(&files)?;
    let gguf_vocab = vocab(&chat.tokenizer);
    if gguf_vocab.is_none() {
        log::warn!("no SentencePiece vocabulary to embed; llama.cpp will need one");
    }
    let template = match chat.own_template {
        Some(yangtuo::ChatTemplate::Jinja { source, .. }) => Some(source),
        _ => None,
    };
    let name = a
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let writer = GgufWriter::llama(
        &c,
        &name,
        llama_file_type(want),
        gguf_vocab,
        template.as_deref(),
    )?;
    let ids = TensorId::all(&c);
    let specs = ids
        .iter()
        .map(|id| GgufTensorSpec::weight(*id, target(*id, id.expected_shape(&c)[1], want), &c))
        .collect::<Result<Vec<_>>>()?;
    if files.weight(ids[0]).is_ok_and(|w| w.format.is_quantized()) {
        log::warn!(
            "the input is quantized already: its weights are dequantized and quantized again, which adds to their error"
        );
    }
    let pb = crate::progress::bar(ids.len() as u64, "quantizing");
    let written = writer.write_file(&a.output, &specs, |i, spec| {
        let id = ids[i];
        let w = files.weight(id)?;
        let f = target(id, w.cols, want);
        // a quantized source (a GGUF) is dequantized and quantized again: the file must hold
        // the type its header says, whatever the source held
        let requantize = w.format.is_quantized() && w.format != WeightFormat::Gptq4;
        let w = if f == WeightFormat::F32 || f == WeightFormat::F16 || (requantize && w.format != f)
        {
            w.converted(f)
        } else {
            quantize_weight(w, f, &spec.name)?
        };
        let row = w.format.row_bytes(w.cols, &spec.name)?;
        // llama.cpp stores Q and K rows permuted for its rotary layout
        let bytes = match (files.rope_style, id) {
            (RopeStyle::Half, TensorId::Layer(_, LayerTensor::Wq)) => {
                permute_rows_for_gguf(&w.bytes, row, c.n_heads, c.head_dim)
            }
            (RopeStyle::Half, TensorId::Layer(_, LayerTensor::Wk)) => {
                permute_rows_for_gguf(&w.bytes, row, c.n_kv_heads, c.head_dim)
            }
            _ => w.bytes.to_vec(),
        };
        pb.inc(1);
        Ok(bytes)
    })?;
    pb.finish_and_clear();
    eprintln!(
        "wrote {} ({} bytes, {} tensors)",
        a.output.display(),
        written,
        ids.len()
    );
    Ok(())
}
