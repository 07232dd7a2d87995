//! A native SentencePiece BPE model that gives the same ids and text as the `sentencepiece`
//! library (Google's C++ code, which Llama 2's `tokenizer.model` was made for).
//!
//! Encoding is the library's pipeline, stage by stage:
//! 1. normalize (`normalizer.cc`): optional precompiled character map, drop extra spaces,
//!    prepend the dummy `▁`, and write every space as `▁` (U+2581);
//! 2. BPE (`bpe_model.cc`): start from characters (user-defined pieces matched longest-first
//!    and frozen), then keep merging the adjacent pair whose concatenation is a piece with the
//!    highest score, the leftmost pair on ties; unused pieces are split back;
//! 3. ids (`sentencepiece_processor.cc`): an unknown piece becomes `<0xNN>` byte pieces when
//!    `byte_fallback` is on, else the unknown id (one per run of unknown pieces).
//!
//! Decoding drops control pieces, turns `▁` into spaces, removes the dummy prefix of the first
//! piece, and decodes runs of byte pieces as UTF-8, each bad byte becoming U+FFFD.
//!
//! `tokenizer.model` is a protobuf `ModelProto` (`sentencepiece_model.proto`), read here by a
//! small wire-format reader.

use crate::{Error, Result};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible space.
const SPACE: &[u8] = "\u{2581}".as_bytes();
/// U+FFFD REPLACEMENT CHARACTER.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
/// What `<unk>` decodes to when the model does not say (`kDefaultUnknownSymbol`).
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";
/// `TrainerSpec.ModelType.BPE`.
const MODEL_TYPE_BPE: i32 = 2;

/// The kind of a vocabulary entry, numbered as in `ModelProto.SentencePiece.Type`
/// (GGUF's `tokenizer.ggml.token_type` uses the same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl PieceType {
    /// Values outside 1..=6 read as `Normal`, as protobuf does for an unknown enum value.
    pub fn from_i32(v: i32) -> PieceType {
        match v {
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => PieceType::Normal,
        }
    }
    /// NORMAL, USER_DEFINED and UNUSED pieces take part in merging; the others are reserved.
    fn is_mergeable(self) -> bool {
        matches!(
            self,
            PieceType::Normal | PieceType::UserDefined | PieceType::Unused
        )
    }
}

#[derive(Debug, Clone)]
struct Piece {
    text: String,
    score: f32,
    kind: PieceType,
    /// The byte of a `Byte` piece (`<0xNN>`).
    byte: Option<u8>,
}

/// A fast hasher for the piece tables (keys are short byte strings).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut v = [0u8; 8];
            v[..chunk.len()].copy_from_slice(chunk);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(v)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A SentencePiece BPE tokenizer.
#[derive(Debug, Clone)]
pub struct SentencePiece {
    pieces: Vec<Piece>,
    /// NORMAL, USER_DEFINED and UNUSED pieces (`pieces_` in the library).
    mergeable: FxMap<Box<[u8]>, u32>,
    /// CONTROL, UNKNOWN and BYTE pieces (`reserved_id_map_`).
    reserved: FxMap<Box<[u8]>, u32>,
    /// The id that `<0xNN>` maps to, for byte fallback.
    byte_ids: Vec<u32>,
    /// USER_DEFINED pieces, matched whole before anything else.
    user_defined: Option<PrefixMatcher>,
    unk: u32,
    bos: Option<u32>,
    eos: Option<u32>,
    byte_fallback: bool,
    normalizer: Normalizer,
    denormalizer: Option<Normalizer>,
    unk_surface: String,
}

/// What the loader reads from `ModelProto`, or what `from_vocab` is given.
struct Spec {
    pieces: Vec<Piece>,
    byte_fallback: bool,
    unk: Option<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    normalizer: Normalizer,
    denormalizer: Option<Normalizer>,
    unk_surface: String,
    /// Reject what the library rejects (duplicate or empty pieces, missing byte pieces).
    strict: bool,
}

impl SentencePiece {
    /// Loads a `tokenizer.model` file.
    pub fn from_file(path: &Path) -> Result<SentencePiece> {
        let bytes = crate::files::read_capped(path, crate::files::TOKENIZER_CAP)
            .map_err(crate::files::as_load_error)?;
        SentencePiece::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: {}", path.display(), message(&e))))
    }

    /// Parses a serialized `ModelProto` (the contents of `tokenizer.model`).
    pub fn from_bytes(bytes: &[u8]) -> Result<SentencePiece> {
        let proto = proto::parse_model(bytes)?;
        if proto.model_type != MODEL_TYPE_BPE {
            let name = match proto.model_type {
                1 => "UNIGRAM",
                3 => "WORD",
                4 => "CHAR",
                _ => "unknown",
            };
            return Err(Error::Tokenizer(format!(
                "only BPE SentencePiece models are supported, this one is {name} (model_type {})",
                proto.model_type
            )));
        }
        let mut pieces = Vec::with_capacity(proto.pieces.len());
        for p in proto.pieces {
            let kind = PieceType::from_i32(p.kind);
            let byte = if kind == PieceType::Byte {
                match piece_to_byte(&p.text) {
                    Some(b) => Some(b),
                    None => {
                        return Err(Error::Tokenizer(format!(
                            "byte piece {} is invalid",
                            p.text
                        )));
                    }
                }
            } else {
                None
            };
            if kind == PieceType::Byte && !proto.byte_fallback {
                return Err(Error::Tokenizer(format!(
                    "byte piece {} is found although `byte_fallback` is false",
                    p.text
                )));
            }
            pieces.push(Piece {
                text: p.text,
                score: p.score,
                kind,
                byte,
            });
        }
        let unk_surface = proto
            .unk_surface
            .unwrap_or_else(|| DEFAULT_UNK_SURFACE.to_string());
        let norm = &proto.normalizer;
        let normalizer = Normalizer {
            add_dummy_prefix: norm.add_dummy_prefix,
            remove_extra_whitespaces: norm.remove_extra_whitespaces,
            escape_whitespaces: norm.escape_whitespaces,
            treat_whitespace_as_suffix: proto.treat_whitespace_as_suffix,
            charsmap: CharsMap::new(&norm.precompiled_charsmap)?,
        };
        // The denormalizer only runs when it has a character map (as in the library).
        let denormalizer = match &proto.denormalizer {
            Some(d) if !d.precompiled_charsmap.is_empty() => Some(Normalizer {
                add_dummy_prefix: d.add_dummy_prefix,
                remove_extra_whitespaces: d.remove_extra_whitespaces,
                escape_whitespaces: d.escape_whitespaces,
                treat_whitespace_as_suffix: false,
                charsmap: CharsMap::new(&d.precompiled_charsmap)?,
            }),
            _ => None,
        };
        let mut sp = SentencePiece::build(Spec {
            pieces,
            byte_fallback: proto.byte_fallback,
            unk: None,
            bos: None,
            eos: None,
            normalizer,
            denormalizer,
            unk_surface,
            strict: true,
        })?;
        // Like `SentencePieceProcessor::bos_id()`: the id of `bos_piece`, if that is a control piece.
        let control = |sp: &SentencePiece, name: &str| {
            sp.piece_to_id(name)
                .filter(|&id| sp.pieces[id as usize].kind == PieceType::Control)
        };
        sp.bos = control(&sp, &proto.bos_piece);
        sp.eos = control(&sp, &proto.eos_piece);
        Ok(sp)
    }

    /// Builds the model from a plain vocabulary, as GGUF files carry it
    /// (`tokenizer.ggml.tokens`, `.scores`, `.token_type`). `scores` and `types` may be empty
    /// (all 0.0, all NORMAL). `unk` defaults to the UNKNOWN piece. Byte fallback is on when the
    /// vocabulary has BYTE pieces. Spaces are escaped as `▁` and never collapsed, as for Llama.
    pub fn from_vocab(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        bos: Option<u32>,
        eos: Option<u32>,
        unk: Option<u32>,
        add_dummy_prefix: bool,
    ) -> Result<SentencePiece> {
        let n = tokens.len();
        if !scores.is_empty() && scores.len() != n {
            return Err(Error::Tokenizer(format!(
                "{n} tokens but {} scores",
                scores.len()
            )));
        }
        if !types.is_empty() && types.len() != n {
            return Err(Error::Tokenizer(format!(
                "{n} tokens but {} token types",
                types.len()
            )));
        }
        for (what, id) in [("bos", bos), ("eos", eos), ("unk", unk)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(Error::Tokenizer(format!(
                    "{what} id {id} is outside the vocabulary of {n}"
                )));
            }
        }
        let mut byte_fallback = false;
        let pieces = tokens
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                let mut kind = PieceType::from_i32(types.get(i).copied().unwrap_or(1));
                let mut byte = None;
                if kind == PieceType::Byte {
                    byte = piece_to_byte(&text);
                    if byte.is_none() {
                        log::warn!("token {i} ({text:?}) is typed BYTE but is not <0xNN>; treating it as normal");
                        kind = PieceType::Normal;
                    } else {
                        byte_fallback = true;
                    }
                }
                Piece { text, score: scores.get(i).copied().unwrap_or(0.0), kind, byte }
            })
            .collect();
        SentencePiece::build(Spec {
            pieces,
            byte_fallback,
            unk,
            bos,
            eos,
            normalizer: Normalizer {
                add_dummy_prefix,
                remove_extra_whitespaces: false,
                escape_whitespaces: true,
                treat_whitespace_as_suffix: false,
                charsmap: None,
            },
            denormalizer: None,
            unk_surface: DEFAULT_UNK_SURFACE.to_string(),
            strict: false,
        })
    }

    /// Builds the lookup tables (`ModelInterface::InitializePieces`).
    fn build(spec: Spec) -> Result<SentencePiece> {
        let Spec {
            pieces,
            byte_fallback,
            unk,
            bos,
            eos,
            normalizer,
            denormalizer,
            unk_surface,
            strict,
        } = spec;
        let mut mergeable = FxMap::default();
        let mut reserved = FxMap::default();
        let mut user_defined = Vec::new();
        let mut unk_found = None;
        let mut byte_found = [false; 256];
        for (i, p) in pieces.iter().enumerate() {
            let id = i as u32;
            if p.text.is_empty() {
                if strict {
                    return Err(Error::Tokenizer(format!("piece {i} is empty")));
                }
                log::warn!("token {i} is empty; it can be decoded but never produced");
                continue;
            }
            let table = if p.kind.is_mergeable() {
                &mut mergeable
            } else {
                &mut reserved
            };
            let key: Box<[u8]> = p.text.as_bytes().into();
            if table.contains_key(&key) {
                if strict {
                    return Err(Error::Tokenizer(format!(
                        "piece {} is already defined",
                        p.text
                    )));
                }
                log::warn!(
                    "token {i} ({:?}) repeats an earlier token; the first one is used",
                    p.text
                );
                continue;
            }
            table.insert(key, id);
            match p.kind {
                PieceType::UserDefined => user_defined.push(p.text.as_bytes().to_vec()),
                PieceType::Unknown => {
                    if unk_found.is_some() && strict {
                        return Err(Error::Tokenizer("unk is already defined".into()));
                    }
                    unk_found.get_or_insert(id);
                }
                PieceType::Byte => byte_found[p.byte.unwrap() as usize] = true,
                _ => {}
            }
        }
        let unk = match unk.or(unk_found) {
            Some(id) => id,
            None => {
                return Err(Error::Tokenizer(
                    "the vocabulary has no unknown piece (<unk>)".into(),
                ));
            }
        };
        if byte_fallback && strict && byte_found.iter().any(|&f| !f) {
            return Err(Error::Tokenizer(
                "there are not 256 byte pieces although `byte_fallback` is true".into(),
            ));
        }
        let mut sp = SentencePiece {
            pieces,
            mergeable,
            reserved,
            byte_ids: Vec::new(),
            user_defined: (!user_defined.is_empty()).then(|| PrefixMatcher::new(user_defined)),
            unk,
            bos,
            eos,
            byte_fallback,
            normalizer,
            denormalizer,
            unk_surface,
        };
        // `PieceToId(ByteToPiece(b))`: the byte piece, or the unknown id if it is missing.
        sp.byte_ids = (0..=255u8)
            .map(|b| sp.piece_to_id(&byte_to_piece(b)).unwrap_or(unk))
            .collect();
        Ok(sp)
    }

    /// Number of pieces, including control and byte pieces.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    pub fn unk_id(&self) -> u32 {
        self.unk
    }
    /// Whether unknown characters are written as `<0xNN>` byte pieces.
    pub fn byte_fallback(&self) -> bool {
        self.byte_fallback
    }
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.text.as_str())
    }
    /// The id of a piece by its exact text (`▁` for spaces); `None` when it is not in the vocabulary.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.reserved
            .get(piece.as_bytes())
            .or_else(|| self.mergeable.get(piece.as_bytes()))
            .copied()
    }
    pub fn piece_type(&self, id: u32) -> Option<PieceType> {
        self.pieces.get(id as usize).map(|p| p.kind)
    }
    pub fn score(&self, id: u32) -> Option<f32> {
        self.pieces.get(id as usize).map(|p| p.score)
    }
    /// The byte a `<0xNN>` piece stands for.
    pub fn byte_value(&self, id: u32) -> Option<u8> {
        self.pieces.get(id as usize).and_then(|p| p.byte)
    }

    /// What a piece contributes to decoded text when it is not the first: its UTF-8 with `▁`
    /// as a space, its byte for a byte piece, nothing for a control piece, the unknown surface
    /// (` ⁇ `) for the unknown piece, nothing for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(p) = self.pieces.get(id as usize) else {
            return Vec::new();
        };
        if let Some(b) = p.byte {
            return vec![b];
        }
        let mut out = Vec::new();
        out.extend_from_slice(self.piece_surface(id, false).0);
        replace_space(&mut out);
        out
    }

    /// Token ids for `text`, without BOS/EOS: `SentencePieceProcessor.encode(text)`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normalized = self
            .normalizer
            .normalize(text.as_bytes(), self.user_defined.as_ref());
        self.encode_normalized(&normalized)
    }

    /// BPE over normalized text (`bpe::Model::SampleEncode` without dropout), then ids
    /// (`PopulateSentencePieceText`).
    fn encode_normalized<'t>(&self, text: &'t [u8]) -> Vec<u32> {
        const NONE: usize = usize::MAX;
        if text.is_empty() {
            return Vec::new();
        }

        /// A run of `text` that has not been merged into its left neighbour (`len == 0` once it has).
        struct Symbol {
            start: usize,
            len: usize,
            prev: usize,
            next: usize,
            /// User-defined pieces are never merged.
            freeze: bool,
        }

        // Split into characters; user-defined pieces are matched whole and frozen.
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        let mut pos = 0;
        while pos < text.len() {
            let (len, freeze) = match &self.user_defined {
                Some(m) => m.prefix_match(&text[pos..]),
                None => (one_char_len(&text[pos..]), false),
            };
            let index = symbols.len();
            symbols.push(Symbol {
                start: pos,
                len,
                prev: if index == 0 { NONE } else { index - 1 },
                next: if pos + len < text.len() {
                    index + 1
                } else {
                    NONE
                },
                freeze,
            });
            pos += len;
        }

        // Candidate merges; stale ones are skipped when popped (lazy invalidation).
        let mut agenda = BinaryHeap::with_capacity(symbols.len());
        // For UNUSED pieces: the last pair that formed each one, to split it back.
        let mut rev_merge: FxMap<&'t [u8], (&'t [u8], &'t [u8])> = FxMap::default();

        let maybe_add = |symbols: &[Symbol],
                         agenda: &mut BinaryHeap<Candidate>,
                         rev_merge: &mut FxMap<&'t [u8], (&'t [u8], &'t [u8])>,
                         left: usize,
                         right: usize| {
            if left == NONE || right == NONE || symbols[left].freeze || symbols[right].freeze {
                return;
            }
            let (l, r) = (&symbols[left], &symbols[right]);
            let piece = &text[l.start..l.start + l.len + r.len];
            let Some(&id) = self.mergeable.get(piece) else {
                return;
            };
            let p = &self.pieces[id as usize];
            agenda.push(Candidate {
                score: score_key(p.score),
                left,
                right,
                size: piece.len(),
            });
            if p.kind == PieceType::Unused {
                let lp = &text[l.start..l.start + l.len];
                let rp = &text[r.start..r.start + r.len];
                rev_merge.insert(piece, (lp, rp));
            }
        };

        for i in 1..symbols.len() {
            maybe_add(&symbols, &mut agenda, &mut rev_merge, i - 1, i);
        }

        while let Some(top) = agenda.pop() {
            let (l, r) = (&symbols[top.left], &symbols[top.right]);
            // The pair is gone if either side was merged away or grew since it was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != top.size {
                continue;
            }
            let next = r.next;
            symbols[top.left].len += symbols[top.right].len;
            symbols[top.left].next = next;
            if next != NONE {
                symbols[next].prev = top.left;
            }
            symbols[top.right].len = 0;
            let prev = symbols[top.left].prev;
            maybe_add(&symbols, &mut agenda, &mut rev_merge, prev, top.left);
            maybe_add(&symbols, &mut agenda, &mut rev_merge, top.left, next);
        }

        // Pieces to ids: unused pieces are split back, unknown ones become bytes.
        let mut ids = Vec::with_capacity(symbols.len());
        let mut prev_unk = false;
        let mut index = 0;
        let mut pieces = Vec::new();
        while index != NONE {
            let s = &symbols[index];
            pieces.clear();
            self.resegment(&text[s.start..s.start + s.len], &rev_merge, &mut pieces);
            for &(piece, id) in &pieces {
                let is_unk = self.is_unknown(id);
                if self.pieces[id as usize].kind == PieceType::Control {
                    ids.push(id);
                } else if is_unk && self.byte_fallback {
                    ids.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
                } else if !(is_unk && prev_unk) {
                    // A run of unknown pieces becomes one unknown id.
                    ids.push(id);
                }
                prev_unk = is_unk;
            }
            index = s.next;
        }
        ids
    }

    /// Splits an UNUSED piece back into the two pieces it was merged from, recursively.
    fn resegment<'a>(
        &self,
        piece: &'a [u8],
        rev_merge: &FxMap<&'a [u8], (&'a [u8], &'a [u8])>,
        out: &mut Vec<(&'a [u8], u32)>,
    ) {
        let id = self.id_of_bytes(piece);
        if self.pieces[id as usize].kind == PieceType::Unused {
            if let Some(&(l, r)) = rev_merge.get(piece) {
                self.resegment(l, rev_merge, out);
                self.resegment(r, rev_merge, out);
                return;
            }
        }
        out.push((piece, id));
    }

    /// `IsUnknown`: the unknown piece (or another piece typed UNKNOWN).
    fn is_unknown(&self, id: u32) -> bool {
        id == self.unk || self.pieces[id as usize].kind == PieceType::Unknown
    }

    /// `PieceToId`: reserved pieces first, then the others, else the unknown id.
    fn id_of_bytes(&self, piece: &[u8]) -> u32 {
        self.reserved
            .get(piece)
            .or_else(|| self.mergeable.get(piece))
            .copied()
            .unwrap_or(self.unk)
    }

    /// Text for `ids`: `SentencePieceProcessor.decode(ids)`. Ids outside the vocabulary are
    /// skipped (the library raises an error; `Tokenizer::decode` checks them first).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut state = DecodeState::default();
        let mut out = Vec::new();
        for &id in ids {
            self.decode_push(&mut state, id, &mut out);
        }
        self.decode_flush(&mut state, &mut out, true);
        if let Some(d) = &self.denormalizer {
            out = d.normalize(&out, None);
        }
        into_string(out)
    }

    /// Whether decoding is a pure left-to-right process that `decode_push` can stream. It is
    /// not when the model has a denormalizer, which rewrites the finished text.
    pub(crate) fn can_stream(&self) -> bool {
        self.denormalizer.is_none()
    }

    /// Decodes one more id into `out`. Byte pieces are collected in `state` until a non-byte
    /// piece arrives or `decode_flush` is called.
    pub(crate) fn decode_push(&self, state: &mut DecodeState, id: u32, out: &mut Vec<u8>) {
        let Some(p) = self.pieces.get(id as usize) else {
            return;
        };
        if let Some(b) = p.byte {
            state.bytes.push(b);
            return;
        }
        self.decode_flush(state, out, true);
        // The dummy prefix is removed only from the first piece that brings text.
        if state.bos_ws_seen || state.text_len > 0 {
            state.is_bos_ws = false;
        }
        let (surface, bos_ws_seen) = self.piece_surface(id, state.is_bos_ws);
        let start = out.len();
        out.extend_from_slice(surface);
        replace_space_from(out, start);
        state.text_len += out.len() - start;
        state.bos_ws_seen = bos_ws_seen;
    }

    /// Writes the pending byte pieces as text: each complete UTF-8 character as itself, each
    /// byte that cannot start one as U+FFFD (`ProcessBytePieces`). With `all == false` a
    /// trailing incomplete character is kept back, since the next bytes may complete it.
    pub(crate) fn decode_flush(&self, state: &mut DecodeState, out: &mut Vec<u8>, all: bool) {
        if state.bytes.is_empty() {
            return;
        }
        let keep = if all {
            0
        } else {
            incomplete_utf8_tail(&state.bytes)
        };
        let end = state.bytes.len() - keep;
        let start = out.len();
        push_bytes_lossy(&state.bytes[..end], out);
        state.text_len += out.len() - start;
        state.bytes.drain(..end);
    }

    /// A piece's text before `▁` becomes a space (`DecodeSentencePiece`), and whether it gave
    /// up a leading `▁` as the dummy prefix.
    fn piece_surface(&self, id: u32, is_bos_ws: bool) -> (&[u8], bool) {
        let p = &self.pieces[id as usize];
        if p.kind == PieceType::Control {
            return (b"", false);
        }
        if self.is_unknown(id) {
            return (self.unk_surface.as_bytes(), false);
        }
        let mut text = p.text.as_bytes();
        let norm = &self.normalizer;
        let mut stripped = false;
        if is_bos_ws && (norm.add_dummy_prefix || norm.remove_extra_whitespaces) {
            if let Some(rest) = text.strip_prefix(SPACE) {
                text = rest;
                // With remove_extra_whitespaces every leading space goes, so keep looking.
                stripped = !norm.remove_extra_whitespaces;
            }
        }
        (text, stripped)
    }
}

/// Decoding state between pieces, for streaming.
#[derive(Debug, Clone)]
pub(crate) struct DecodeState {
    /// Still at the start: the next piece's leading `▁` may be the dummy prefix.
    is_bos_ws: bool,
    /// The previous piece gave up its leading `▁`.
    bos_ws_seen: bool,
    /// Bytes of text written so far.
    text_len: usize,
    /// Byte pieces not yet written.
    bytes: Vec<u8>,
}

impl Default for DecodeState {
    fn default() -> Self {
        DecodeState {
            is_bos_ws: true,
            bos_ws_seen: false,
            text_len: 0,
            bytes: Vec::new(),
        }
    }
}

/// A candidate merge of `symbols[left]` and `symbols[right]` into a piece of `size` bytes.
/// The heap pops the highest score first, then the leftmost pair.
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}

/// A score that `total_cmp` orders as C++'s `<` does (-0.0 equals 0.0).
fn score_key(score: f32) -> f32 {
    if score == 0.0 { 0.0 } else { score }
}

/// Replaces every `▁` in `out[start..]` with a space.
fn replace_space_from(out: &mut Vec<u8>, start: usize) {
    if !out[start..].windows(3).any(|w| w == SPACE) {
        return;
    }
    let tail = out.split_off(start);
    let mut i = 0;
    while i < tail.len() {
        if tail[i..].starts_with(SPACE) {
            out.push(b' ');
            i += SPACE.len();
        } else {
            out.push(tail[i]);
            i += 1;
        }
    }
}

fn replace_space(out: &mut Vec<u8>) {
    replace_space_from(out, 0)
}

/// Length of the UTF-8 sequence a lead byte announces (1 for ASCII and for bytes that
/// cannot start one), as `string_util::OneCharLen`.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// Length of the first character of `text` (at most `text.len()`).
fn one_char_len(text: &[u8]) -> usize {
    utf8_len(text[0]).min(text.len())
}

/// Length of the first character if it is valid UTF-8 (`IsValidDecodeUTF8`), else `None`.
fn valid_char_len(text: &[u8]) -> Option<usize> {
    let lead = *text.first()?;
    if lead < 0x80 {
        return Some(1);
    }
    let n = utf8_len(lead);
    (n > 1 && text.len() >= n && std::str::from_utf8(&text[..n]).is_ok()).then_some(n)
}

/// Appends `bytes` as sentencepiece decodes a run of byte pieces: valid characters as they
/// are, every other byte as U+FFFD (one per byte, unlike `String::from_utf8_lossy`).
fn push_bytes_lossy(bytes: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < bytes.len() {
        match valid_char_len(&bytes[i..]) {
            Some(n) => {
                out.extend_from_slice(&bytes[i..i + n]);
                i += n;
            }
            None => {
                out.extend_from_slice(REPLACEMENT);
                i += 1;
            }
        }
    }
}

/// How many trailing bytes are the start of a UTF-8 character that more bytes could still
/// complete (0 to 3). Those bytes would decode as U+FFFD now but not later.
pub(crate) fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=n.min(3) {
        let lead = bytes[n - back];
        if lead & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead
        }
        let need = match lead {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0, // ASCII, or a byte that never starts a valid character
        };
        if back >= need {
            return 0; // complete (valid or not): its decoding is final
        }
        // The second byte's range depends on the lead (no overlongs, surrogates, > U+10FFFF).
        let second_ok = |b: u8| match lead {
            0xE0 => (0xA0..=0xBF).contains(&b),
            0xED => (0x80..=0x9F).contains(&b),
            0xF0 => (0x90..=0xBF).contains(&b),
            0xF4 => (0x80..=0x8F).contains(&b),
            _ => (0x80..=0xBF).contains(&b),
        };
        return if back < 2 || second_ok(bytes[n - back + 1]) {
            back
        } else {
            0
        };
    }
    0
}

fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn byte_to_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// `<0xNN>` (upper-case hex, as the library writes it) to its byte.
fn piece_to_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The message of a `Tokenizer` error without the variant's own prefix.
fn message(e: &Error) -> String {
    match e {
        Error::Tokenizer(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Longest-match lookup of user-defined pieces (`normalizer::PrefixMatcher`).
#[derive(Debug, Clone)]
struct PrefixMatcher {
    pieces: std::collections::HashSet<Vec<u8>, BuildHasherDefault<FxHasher>>,
    max_len: usize,
}

impl PrefixMatcher {
    fn new(pieces: Vec<Vec<u8>>) -> PrefixMatcher {
        let max_len = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
        PrefixMatcher {
            pieces: pieces.into_iter().collect(),
            max_len,
        }
    }

    /// Length of the longest user-defined piece at the start of `text` and `true`, or the
    /// length of one character and `false`.
    fn prefix_match(&self, text: &[u8]) -> (usize, bool) {
        for len in (1..=self.max_len.min(text.len())).rev() {
            if self.pieces.contains(&text[..len]) {
                return (len, true);
            }
        }
        (one_char_len(text), false)
    }
}

/// The normalizer (`normalizer::Normalizer`).
#[derive(Debug, Clone)]
struct Normalizer {
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    treat_whitespace_as_suffix: bool,
    charsmap: Option<CharsMap>,
}

impl Normalizer {
    /// Normalizes `input`. User-defined pieces are copied as they are, not rewritten.
    fn normalize(&self, input: &[u8], matcher: Option<&PrefixMatcher>) -> Vec<u8> {
        let mut input = input;
        let mut out = Vec::with_capacity(input.len() * 3 / 2 + 3);
        // Leading spaces.
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (sp, n) = self.normalize_prefix(input, matcher);
                if sp != b" " {
                    break;
                }
                input = &input[n..];
            }
        }
        if input.is_empty() {
            return out;
        }
        let space: &[u8] = if self.escape_whitespaces { SPACE } else { b" " };
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut sp, n) = self.normalize_prefix(input, matcher);
            // Drop spaces that follow a space.
            while is_prev_space && sp.first() == Some(&b' ') {
                sp = &sp[1..];
            }
            if !sp.is_empty() {
                for &b in sp {
                    if b == b' ' && self.escape_whitespaces {
                        out.extend_from_slice(SPACE);
                    } else {
                        out.push(b);
                    }
                }
                is_prev_space = sp.last() == Some(&b' ');
            }
            input = &input[n..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        // Trailing spaces.
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        out
    }

    /// The normalized form of the start of `input` and how many input bytes it covers.
    fn normalize_prefix<'a>(
        &'a self,
        input: &'a [u8],
        matcher: Option<&PrefixMatcher>,
    ) -> (&'a [u8], usize) {
        if let Some(m) = matcher {
            let (n, found) = m.prefix_match(input);
            if found {
                return (&input[..n], n);
            }
        }
        if let Some(map) = &self.charsmap {
            if let Some((n, replacement)) = map.longest_match(input) {
                return (replacement, n);
            }
        }
        match valid_char_len(input) {
            Some(n) => (&input[..n], n),
            None => (REPLACEMENT, 1), // malformed UTF-8: one byte becomes U+FFFD
        }
    }
}

/// A precompiled normalization map: a darts-clone double-array trie from input strings to
/// offsets of NUL-terminated replacements. Blob layout: `<trie bytes: u32 LE><trie><strings>`.
#[derive(Debug, Clone)]
struct CharsMap {
    trie: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    fn new(blob: &[u8]) -> Result<Option<CharsMap>> {
        if blob.is_empty() {
            return Ok(None);
        }
        let broken = || Error::Tokenizer("the normalizer's precompiled_charsmap is broken".into());
        if blob.len() <= 4 {
            return Err(broken());
        }
        let trie_size = u32::from_le_bytes(blob[..4].try_into().unwrap()) as usize;
        if trie_size >= blob.len() || 4 + trie_size > blob.len() {
            return Err(broken());
        }
        let trie = blob[4..4 + trie_size]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(Some(CharsMap {
            trie,
            normalized: blob[4 + trie_size..].to_vec(),
        }))
    }

    /// The longest key that is a prefix of `input`: its length and its replacement.
    fn longest_match(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        // darts-clone units: bit 8 has_leaf, bits 0-7 (with bit 31) label, bits 10.. offset,
        // value = the low 31 bits of the leaf unit.
        let unit = |pos: usize| self.trie.get(pos).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let mut best = None;
        let mut pos = offset(unit(0)?);
        // The library looks at no more than 32 matches.
        let mut found = 0;
        for (i, &c) in input.iter().enumerate() {
            pos ^= c as usize;
            let u = unit(pos)?;
            if u & ((1 << 31) | 0xFF) != c as u32 {
                break;
            }
            pos ^= offset(u);
            if (u >> 8) & 1 == 1 {
                let value = (unit(pos)? & ((1 << 31) - 1)) as usize;
                if found < 32 {
                    best = Some((i + 1, value));
                }
                found += 1;
            }
        }
        let (len, value) = best?;
        let rest = self.normalized.get(value..)?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Some((len, &rest[..end]))
    }
}

/// Protobuf wire-format reading for `ModelProto`: only the fields the tokenizer needs.
mod proto {
    use crate::{Error, Result};

    pub struct PieceProto {
        pub text: String,
        pub score: f32,
        pub kind: i32,
    }

    pub struct NormalizerProto {
        pub precompiled_charsmap: Vec<u8>,
        pub add_dummy_prefix: bool,
        pub remove_extra_whitespaces: bool,
        pub escape_whitespaces: bool,
    }

    impl Default for NormalizerProto {
        fn default() -> Self {
            // Defaults from sentencepiece_model.proto.
            NormalizerProto {
                precompiled_charsmap: Vec::new(),
                add_dummy_prefix: true,
                remove_extra_whitespaces: true,
                escape_whitespaces: true,
            }
        }
    }

    pub struct ModelProto {
        pub pieces: Vec<PieceProto>,
        // TrainerSpec
        pub model_type: i32,
        pub byte_fallback: bool,
        pub treat_whitespace_as_suffix: bool,
        pub unk_surface: Option<String>,
        pub bos_piece: String,
        pub eos_piece: String,
        pub normalizer: NormalizerProto,
        pub denormalizer: Option<NormalizerProto>,
    }

    fn bad(what: &str) -> Error {
        Error::Tokenizer(format!("not a SentencePiece model (protobuf {what})"))
    }

    /// A cursor over one message.
    struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    /// A field's value as it appears on the wire.
    enum Value<'a> {
        Varint(u64),
        Fixed64,
        Bytes(&'a [u8]),
        Fixed32(u32),
    }

    impl<'a> Reader<'a> {
        fn new(buf: &'a [u8]) -> Self {
            Reader { buf, pos: 0 }
        }

        fn varint(&mut self) -> Result<u64> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = *self
                    .buf
                    .get(self.pos)
                    .ok_or_else(|| bad("varint past the end"))?;
                self.pos += 1;
                v |= ((b & 0x7F) as u64) << shift;
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err(bad("varint too long"))
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8]> {
            let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
            let end = end.ok_or_else(|| bad("field past the end"))?;
            let s = &self.buf[self.pos..end];
            self.pos = end;
            Ok(s)
        }

        /// The next field number and value, skipping groups; `None` at the end.
        fn next(&mut self) -> Result<Option<(u64, Value<'a>)>> {
            loop {
                if self.pos >= self.buf.len() {
                    return Ok(None);
                }
                let key = self.varint()?;
                let field = key >> 3;
                let value = match key & 7 {
                    0 => Value::Varint(self.varint()?),
                    1 => {
                        self.take(8)?;
                        Value::Fixed64
                    }
                    2 => {
                        let n = self.varint()?;
                        Value::Bytes(
                            self.take(usize::try_from(n).map_err(|_| bad("length too large"))?)?,
                        )
                    }
                    3 => {
                        self.skip_group(field)?;
                        continue;
                    }
                    5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
                    _ => return Err(bad("wire type")),
                };
                return Ok(Some((field, value)));
            }
        }

        /// Skips a (deprecated) group up to its end-group key.
        fn skip_group(&mut self, field: u64) -> Result<()> {
            loop {
                if self.pos >= self.buf.len() {
                    return Err(bad("unterminated group"));
                }
                let key = self.varint()?;
                match key & 7 {
                    0 => {
                        self.varint()?;
                    }
                    1 => {
                        self.take(8)?;
                    }
                    2 => {
                        let n = self.varint()?;
                        self.take(usize::try_from(n).map_err(|_| bad("length too large"))?)?;
                    }
                    3 => self.skip_group(key >> 3)?,
                    4 if key >> 3 == field => return Ok(()),
                    5 => {
                        self.take(4)?;
                    }
                    _ => return Err(bad("wire type")),
                }
            }
        }
    }

    fn string(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// An `int32`/enum varint (negative values are sign-extended to 64 bits on the wire).
    fn int32(v: u64) -> i32 {
        v as i64 as i32
    }

    fn parse_piece(buf: &[u8]) -> Result<PieceProto> {
        let mut p = PieceProto {
            text: String::new(),
            score: 0.0,
            kind: 1,
        };
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (1, Value::Bytes(b)) => p.text = string(b),
                (2, Value::Fixed32(v)) => p.score = f32::from_bits(v),
                (3, Value::Varint(v)) => p.kind = int32(v),
                _ => {}
            }
        }
        Ok(p)
    }

    fn parse_trainer(buf: &[u8], m: &mut ModelProto) -> Result<()> {
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (3, Value::Varint(v)) => m.model_type = int32(v),
                (24, Value::Varint(v)) => m.treat_whitespace_as_suffix = v != 0,
                (35, Value::Varint(v)) => m.byte_fallback = v != 0,
                (44, Value::Bytes(b)) => m.unk_surface = Some(string(b)),
                (46, Value::Bytes(b)) => m.bos_piece = string(b),
                (47, Value::Bytes(b)) => m.eos_piece = string(b),
                _ => {}
            }
        }
        Ok(())
    }

    fn parse_normalizer(buf: &[u8], n: &mut NormalizerProto) -> Result<()> {
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (2, Value::Bytes(b)) => n.precompiled_charsmap = b.to_vec(),
                (3, Value::Varint(v)) => n.add_dummy_prefix = v != 0,
                (4, Value::Varint(v)) => n.remove_extra_whitespaces = v != 0,
                (5, Value::Varint(v)) => n.escape_whitespaces = v != 0,
                _ => {}
            }
        }
        Ok(())
    }

    /// Parses `ModelProto`: pieces (1), trainer_spec (2), normalizer_spec (3),
    /// denormalizer_spec (5). A message field that appears twice is merged, as protobuf does.
    pub fn parse_model(buf: &[u8]) -> Result<ModelProto> {
        let mut m = ModelProto {
            pieces: Vec::new(),
            model_type: 1, // UNIGRAM is the proto default
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_surface: None,
            bos_piece: "<s>".into(),
            eos_piece: "</s>".into(),
            normalizer: NormalizerProto::default(),
            denormalizer: None,
        };
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (1, Value::Bytes(b)) => m.pieces.push(parse_piece(b)?),
                (2, Value::Bytes(b)) => parse_trainer(b, &mut m)?,
                (3, Value::Bytes(b)) => {
                    let mut n = std::mem::take(&mut m.normalizer);
                    parse_normalizer(b, &mut n)?;
                    m.normalizer = n;
                }
                (5, Value::Bytes(b)) => {
                    let mut n = m.denormalizer.take().unwrap_or_default();
                    parse_normalizer(b, &mut n)?;
                    m.denormalizer = Some(n);
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err(Error::Tokenizer(
                "not a SentencePiece model (no pieces)".into(),
            ));
        }
        Ok(m)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// `tests/data` next to the workspace, where the tokenizers and golden files live.
    pub(crate) fn shared_dir() -> Option<PathBuf> {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data"));
        if dir.is_dir() {
            Some(dir)
        } else {
            panic!(
                "tests/data is not at {} (the tokenizers and goldens the tests need)",
                dir.display()
            )
        }
    }

    /// `(text, ids)` for each line of a golden tokenization file.
    pub(crate) fn golden(shared: &Path, name: &str) -> Vec<(String, Vec<u32>)> {
        let path = shared.join("golden").join(name);
        let data =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        data.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let text = v["text"].as_str().unwrap().to_string();
                let ids = v["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect();
                (text, ids)
            })
            .collect()
    }

    fn load(shared: &Path, vocab: &str) -> SentencePiece {
        SentencePiece::from_file(
            &shared
                .join("tokenizers")
                .join(vocab)
                .join("tokenizer.model"),
        )
        .unwrap()
    }

    /// Every golden line, encoded natively, must equal `sentencepiece.encode`.
    fn check_golden(vocab: &str, file: &str) {
        let Some(shared) = shared_dir() else { return };
        let sp = load(&shared, vocab);
        let lines = golden(&shared, file);
        assert!(!lines.is_empty(), "{file} is empty");
        let mut matched = 0;
        for (i, (text, ids)) in lines.iter().enumerate() {
            let got = sp.encode(text);
            assert_eq!(&got, ids, "{file} line {}: {text:?}", i + 1);
            matched += 1;
        }
        eprintln!(
            "{vocab}: {matched}/{} golden lines match (native SentencePiece)",
            lines.len()
        );
    }

    #[test]
    fn golden_llama2() {
        check_golden("llama2", "tokenize-llama2.jsonl");
    }

    #[test]
    fn golden_chinese_llama2() {
        check_golden("chinese-llama2", "tokenize-chinese-llama2.jsonl");
    }

    /// `decode(encode(text))` for every golden line. Checked with sentencepiece 0.2 in Python:
    /// `decode(ids)` gives back the text exactly for all 408 lines of both files (identity
    /// normalizer, no removal of extra spaces), including " ", "  two leading", "trailing  ",
    /// "\n\nnewline first", emoji and Hangul that go through byte pieces.
    #[test]
    fn golden_decode_round_trip() {
        let Some(shared) = shared_dir() else { return };
        for (vocab, file) in [
            ("llama2", "tokenize-llama2.jsonl"),
            ("chinese-llama2", "tokenize-chinese-llama2.jsonl"),
        ] {
            let sp = load(&shared, vocab);
            for (text, ids) in golden(&shared, file) {
                assert_eq!(sp.decode(&ids), text, "{vocab}");
            }
        }
    }

    /// Decoding edge cases, each checked against `sentencepiece.decode` (0.2) with the Llama 2 model.
    #[test]
    fn decode_matches_library() {
        let Some(shared) = shared_dir() else { return };
        let sp = load(&shared, "llama2");
        let b = |x: u32| x + 3; // <0xNN> is id NN + 3
        let cases: &[(&[u32], &str)] = &[
            (&[1, 29871, 13], "\n"),
            (&[29871], ""),
            (&[29871, 29871, 22172], "  hello"),
            (&[259, 22172], "  hello"),
            (&[1, 259, 22172, 2], "  hello"),
            (&[0], " \u{2047} "),
            (&[0, 22172], " \u{2047}  hello"),
            (&[22172, 0], "hello \u{2047} "),
            (&[b(0xE5), 22172], "\u{FFFD} hello"),
            (&[b(0xE5), b(0x92)], "\u{FFFD}\u{FFFD}"),
            (&[b(0xE5), b(0x92), b(0x96)], "咖"),
            (&[b(0xE5), b(0x92), 22172], "\u{FFFD}\u{FFFD} hello"),
            (&[b(0xF0), b(0x9F), b(0x98)], "\u{FFFD}\u{FFFD}\u{FFFD}"),
            (&[b(0x80)], "\u{FFFD}"),
            (&[b(0xC0), b(0x80)], "\u{FFFD}\u{FFFD}"),
            (&[b(0xED), b(0xA0), b(0x80)], "\u{FFFD}\u{FFFD}\u{FFFD}"),
            (
                &[b(0xF4), b(0x90), b(0x80), b(0x80)],
                "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}",
            ),
            (&[b(0xEF), b(0xBF), b(0xBD)], "\u{FFFD}"),
            (&[b(0x23), 22172], "# hello"),
            (&[b(0x20), 22172], "  hello"),
            (&[b(0x20)], " "),
            (&[1, b(0x41), 22172], "A hello"),
            (&[2, 22172], "hello"),
            (&[1, 1, 22172], "hello"),
        ];
        for (ids, want) in cases {
            assert_eq!(sp.decode(ids), *want, "{ids:?}");
        }
    }

    /// Encoding edge cases checked against `sentencepiece.encode` (0.2) with the Llama 2 model.
    #[test]
    fn encode_matches_library() {
        let Some(shared) = shared_dir() else { return };
        let sp = load(&shared, "llama2");
        assert_eq!(sp.encode(""), Vec::<u32>::new());
        assert_eq!(sp.encode(" hello"), [29871, 22172]);
        assert_eq!(sp.encode("hello"), [22172]);
        assert_eq!(sp.encode("  "), [1678]);
        assert_eq!(sp.encode("\u{2581}x"), [29871, 921]);
        assert_eq!(
            sp.encode("<s>hi</s>"),
            [529, 29879, 29958, 2918, 829, 29879, 29958]
        );
        assert_eq!(
            sp.encode("<0x41>"),
            [529, 29900, 29916, 29946, 29896, 29958]
        );
        assert_eq!(
            (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.vocab_size()),
            (Some(1), Some(2), 0, 32000)
        );
        assert_eq!(sp.id_to_piece(22172), Some("\u{2581}hello"));
        assert_eq!(sp.piece_to_id("<0x0A>"), Some(13));
        assert_eq!(sp.piece_to_id("no such piece"), None);
        assert_eq!(sp.token_bytes(22172), b" hello");
        assert_eq!(sp.token_bytes(13), b"\n");
        assert_eq!(sp.token_bytes(1), b"");
    }

    /// The same vocabulary through `from_vocab` (the GGUF path) encodes and decodes the same.
    #[test]
    fn from_vocab_matches_model() {
        let Some(shared) = shared_dir() else { return };
        let sp = load(&shared, "chinese-llama2");
        let n = sp.vocab_size() as u32;
        let tokens = (0..n)
            .map(|i| sp.id_to_piece(i).unwrap().to_string())
            .collect();
        let scores = (0..n).map(|i| sp.score(i).unwrap()).collect();
        let types = (0..n).map(|i| sp.piece_type(i).unwrap() as i32).collect();
        let v = SentencePiece::from_vocab(tokens, scores, types, Some(1), Some(2), Some(0), true)
            .unwrap();
        assert!(v.byte_fallback());
        for (text, ids) in golden(&shared, "tokenize-chinese-llama2.jsonl") {
            assert_eq!(v.encode(&text), ids);
            assert_eq!(v.decode(&ids), text);
        }
    }

    /// 100 KB of Chinese must encode quickly (the heap keeps BPE at O(n log n)); so must a
    /// long run of one repeated character.
    #[test]
    fn long_input_is_fast() {
        let Some(shared) = shared_dir() else { return };
        let sp = load(&shared, "chinese-llama2");
        let chinese: String = golden(&shared, "tokenize-chinese-llama2.jsonl")
            .iter()
            .flat_map(|(t, _)| t.chars().filter(|c| !c.is_ascii()).collect::<Vec<_>>())
            .collect();
        let mut text = String::new();
        while text.len() < 100_000 {
            text.push_str(&chinese);
        }
        for text in [text, "哈".repeat(33_000), "x".repeat(100_000)] {
            let t0 = std::time::Instant::now();
            let ids = sp.encode(&text);
            let dt = t0.elapsed();
            eprintln!(
                "encoded {} bytes into {} ids in {dt:?}",
                text.len(),
                ids.len()
            );
            assert_eq!(sp.decode(&ids), text);
            // Generous: debug builds are far slower than release, where this takes milliseconds.
            assert!(dt.as_secs_f64() < 5.0, "{dt:?}");
        }
    }

    /// A tiny hand-made model: merges, ties broken leftmost, UNUSED pieces split back, user-
    /// defined pieces kept whole, unknown characters without byte fallback.
    #[test]
    fn tiny_vocab_rules() {
        let p = |s: &str| s.to_string();
        let tokens = vec![
            p("<unk>"),
            p("<s>"),
            p("</s>"),
            p("▁"),
            p("a"),
            p("b"),
            p("c"),
            p("ab"),
            p("bc"),
            p("abc"),
            p("<X>"),
            p("▁a"),
        ];
        let scores = vec![
            0.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0, -2.0, -2.0, -3.0, 0.0, -5.0,
        ];
        let types = vec![2, 3, 3, 1, 1, 1, 1, 1, 1, 5, 4, 1];
        let sp = SentencePiece::from_vocab(tokens, scores, types, Some(1), Some(2), None, false)
            .unwrap();
        assert_eq!(sp.unk_id(), 0);
        // "ab" and "bc" tie: the left pair merges; "abc" is UNUSED and goes back to ab + c.
        assert_eq!(sp.encode("abc"), [7, 6]);
        // "bc" then "a": nothing joins a + bc.
        assert_eq!(sp.encode("bca"), [8, 4]);
        // User-defined piece stays whole and never merges with neighbours.
        assert_eq!(sp.encode("a<X>b"), [4, 10, 5]);
        // Unknown characters: one unknown id per run, no byte pieces in this vocabulary.
        assert_eq!(sp.encode("axyb"), [4, 0, 5]);
        assert_eq!(sp.encode(" a"), [11]);
        assert_eq!(sp.decode(&[4, 0, 5]), "a \u{2047} b");
    }

    #[test]
    fn incomplete_tail() {
        assert_eq!(incomplete_utf8_tail(b""), 0);
        assert_eq!(incomplete_utf8_tail(b"a"), 0);
        assert_eq!(incomplete_utf8_tail(&[0xE5]), 1);
        assert_eq!(incomplete_utf8_tail(&[0xE5, 0x92]), 2);
        assert_eq!(incomplete_utf8_tail(&[0xE5, 0x92, 0x96]), 0);
        assert_eq!(incomplete_utf8_tail(&[0xF0, 0x9F, 0x98]), 3);
        assert_eq!(incomplete_utf8_tail(&[0xE0, 0x80]), 0); // overlong: never valid
        assert_eq!(incomplete_utf8_tail(&[0xED, 0xA0]), 0); // surrogate
        assert_eq!(incomplete_utf8_tail(&[0xC0]), 0);
        assert_eq!(incomplete_utf8_tail(&[0x80, 0x80]), 0);
    }

    #[test]
    fn rejects_non_bpe_and_garbage() {
        // ModelProto { pieces: [{piece: "a"}], trainer_spec: {model_type: UNIGRAM} }
        let unigram = [0x0A, 0x03, 0x0A, 0x01, b'a', 0x12, 0x02, 0x18, 0x01];
        let e = SentencePiece::from_bytes(&unigram).unwrap_err().to_string();
        assert!(e.contains("only BPE"), "{e}");
        assert!(SentencePiece::from_bytes(b"{\"not\": \"protobuf\"}").is_err());
        assert!(SentencePiece::from_bytes(&[]).is_err());
    }
}
