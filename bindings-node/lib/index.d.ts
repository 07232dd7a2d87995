// Types of the npm package `yangtuo` (the public API in lib/index.js).

export type Role = 'system' | 'user' | 'assistant'

export interface ChatMessage {
  role: Role
  content: string
}

export interface LoadProgress {
  /** The tensor just loaded (GGUF name). */
  tensor: string
  doneBytes: number
  totalBytes: number
}

export interface LoadOptions {
  /** `auto` (default: CUDA on an NVIDIA GPU with its driver and NVRTC, then a hardware GPU
   * through wgpu, then the CPU; never a software adapter; `$YANGTUO_BACKEND` overrides),
   * `wgpu`, `cuda` or `cpu`. */
  backend?: 'auto' | 'wgpu' | 'cuda' | 'cpu'
  /** Quantize f16/bf16/f32 weights while loading. */
  quantize?: 'q4_0' | 'q4_1' | 'q8_0' | 'q4_k' | 'q6_k' | 'f16'
  /** `llama2` or `llama2-chinese`; default: the model's own template, else `llama2`. */
  template?: string
  /** KV cache length in tokens; default min(trained context, 4096). */
  nCtx?: number
  /** How the KV cache stores keys and values: `auto` (default: f16 on a GPU that computes in
   * f16, else f32), `f16` (half the memory) or `f32`. */
  kvCacheDtype?: 'auto' | 'f16' | 'f32'
  /** Tokens per prefill batch (default 512). */
  maxBatch?: number
  /** Above 1: concurrent `chat()` / `chatStream()` calls (up to this many) share each
   * decode step, continuous batching as `yangtuo serve --parallel` does. Default 1. */
  parallel?: number
  /** A jinja template that describes a request's `tools` in the system prompt (it gets
   * `system`, `tools` and `tool_choice`); default: yangtuo's (README, "Tool calls"). */
  toolTemplate?: string
  /** Called on the main thread after each tensor is loaded. */
  onProgress?: (progress: LoadProgress) => void
}

export interface GenerateOptions {
  /** At most this many new tokens; default: until EOS or the end of the context. */
  maxTokens?: number
  /** 0 is greedy. Default 0.6 (Meta's). */
  temperature?: number
  /** Nucleus mass in (0, 1]. Default 0.9 (Meta's). */
  topP?: number
  topK?: number
  /** Drop tokens whose probability is below minP times the top one. */
  minP?: number
  /** CTRL-style penalty on tokens already in the prompt or answer (1.1–1.3 is usual). */
  repetitionPenalty?: number
  /** Same seed, same options, same answer (on every backend). */
  seed?: number
  /** Stop before this string (or any of these); it is not part of the answer. */
  stop?: string | string[]
  /** Accept template control strings (`[INST]`, `<s>`, ...) inside message content. */
  allowControlTokens?: boolean
  /** When the chat outgrows the context: `truncate-oldest` leaves out the oldest turns (a session's default), `error` rejects with CONTEXT_LENGTH (a one-shot chat's default). */
  contextOverflow?: 'truncate-oldest' | 'error'
  /** Abort the call: it rejects with an `AbortError` (code `ABORTED`) before the next token. */
  signal?: AbortSignal
}

export interface Usage {
  promptTokens: number
  completionTokens: number
  totalTokens: number
}

export interface Timings {
  /** Prompt tokens actually run (a cached prefix is not run again). */
  prefillTokens: number
  prefillMs: number
  /** From the call to the first sampled token. */
  ttftMs: number
  decodeTokens: number
  decodeMs: number
}

export interface Completion {
  content: string
  /** `stop`: EOS or a stop string; `length`: `maxTokens` or the end of the context. */
  finishReason: 'stop' | 'length'
  usage: Usage
  /** The generated token ids (EOS excluded). */
  ids: number[]
  timings: Timings
  /** The oldest turns left out so the chat fits the context. */
  droppedTurns: number
}

/** Text deltas; they concatenate to the answer. The iterator's return value is the completion. */
export type CompletionStream = AsyncGenerator<string, Completion, undefined>

/**
 * The `code` of every error this package throws or rejects with:
 * `MODEL_LOAD`, `TEMPLATE` (with `index`), `CONTEXT_LENGTH`, `INVALID_ARG`, `DEVICE`,
 * `ABORTED` (name `AbortError`), `INTERNAL` (a bug: a caught Rust panic).
 */
export type ErrorCode = 'MODEL_LOAD' | 'TEMPLATE' | 'CONTEXT_LENGTH' | 'INVALID_ARG' | 'DEVICE' | 'ABORTED' | 'INTERNAL'

export interface YangtuoError extends Error {
  code: ErrorCode
  /** For `TEMPLATE`: the position of the offending message. */
  index?: number
}

/** A conversation that keeps its KV cache between turns. One turn at a time. */
export declare class ChatSession {
  private constructor()
  /** Send a user message; resolves to the answer, which joins `messages`. */
  chat(text: string, options?: GenerateOptions): Promise<Completion>
  chatStream(text: string, options?: GenerateOptions): CompletionStream
  /** The conversation so far (a copy). */
  readonly messages: ChatMessage[]
  /** Forget the conversation; the system prompt stays. */
  reset(): void
}

/** OpenAI's request fields; the engine checks them and rejects (INVALID_ARG, naming the field) any it does not implement. */
export interface OpenAIRequestFields {
  model?: string
  max_tokens?: number
  max_completion_tokens?: number
  temperature?: number
  top_p?: number
  top_k?: number
  min_p?: number
  repetition_penalty?: number
  frequency_penalty?: number
  presence_penalty?: number
  /** >= 0 repeats sampling; -1 or absent is random. */
  seed?: number
  stop?: string | string[]
  stream?: boolean
  stream_options?: { include_usage?: boolean }
  /** Chat: `true` adds each token's logprob; completions: how many alternatives (0-20). */
  logprobs?: boolean | number
  /** Chat, with `logprobs: true`: how many alternatives per token (0-20). */
  top_logprobs?: number
  n?: number
  /** Structured output: every token is masked by llguidance so the answer parses and
   * satisfies the schema. */
  response_format?:
    | { type: 'text' }
    | { type: 'json_object' }
    | { type: 'json_schema'; json_schema: { name?: string; schema: object; strict?: boolean } }
  /** A grammar in llguidance's Lark dialect the answer must match (not with a JSON response_format). */
  grammar?: string
  /** Functions the model may call (chat only). Llama 2 has no tool format: the tools are
   * described in the system prompt and a call is constrained to `{"name", "arguments"}` with
   * the arguments satisfying `parameters` (README, "Tool calls"). */
  tools?: ToolDefinition[]
  /** `auto` (the default with tools): text or one call; `required`: one call; a named
   * function: a call to it; `none`: no call. */
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } }
  /** Accepted; an answer makes at most one call. */
  parallel_tool_calls?: boolean
  user?: string
  /** yangtuo's: leave out the oldest turns that do not fit the context instead of failing. */
  context_overflow?: 'truncate-oldest' | 'error'
  /** vLLM's and llama.cpp's: generate to `max_tokens` without stopping at end-of-sequence. */
  ignore_eos?: boolean
  /** Stops the generation: before it starts, the call rejects with an AbortError; after,
   * the answer ends with `finish_reason: 'abort'` and the text so far. */
  signal?: AbortSignal
}

export interface ToolDefinition {
  type: 'function'
  function: { name: string; description?: string; parameters?: object }
}

/** A call the model makes; `arguments` is JSON text. */
export interface ToolCall {
  id: string
  type: 'function'
  function: { name: string; arguments: string }
}

/** A message of an OpenAI-shaped chat: besides `{role, content}`, an assistant's earlier
 * `tool_calls` and the `tool` results that answer them. */
export type OpenAIMessage =
  | ChatMessage
  | { role: 'assistant'; content?: string | null; tool_calls: ToolCall[] }
  | { role: 'tool'; tool_call_id: string; content: string }

export interface ChatCompletionRequest extends OpenAIRequestFields {
  messages: OpenAIMessage[]
}

export interface CompletionRequest extends OpenAIRequestFields {
  prompt: string
}

export interface OpenAIUsage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
  prompt_tokens_details: { cached_tokens: number }
}

export interface OpenAITimings {
  prefill_tokens: number
  prefill_s: number
  ttft_s: number
  decode_tokens: number
  decode_s: number
}

/** A token's log-probability under the model (log-softmax of its raw logits). */
export interface TokenLogprob {
  token: string
  logprob: number
  /** The token's UTF-8 bytes (a byte-fallback token holds part of a character). */
  bytes: number[]
}

/** `choices[i].logprobs` of a chat answer or chunk, with `logprobs: true`. */
export interface ChatLogprobs {
  content: (TokenLogprob & { top_logprobs: TokenLogprob[] })[]
}

/** `choices[i].logprobs` of a text completion, with `logprobs: n`. */
export interface TextLogprobs {
  tokens: string[]
  token_logprobs: number[]
  top_logprobs: Record<string, number>[]
  /** Where each token starts in the text, in characters. */
  text_offset: number[]
}

/** `abort`: stopped by an AbortSignal (or a server's timeout); the text so far.
 * `tool_calls`: the answer is a call (`message.tool_calls`, `content: null`). */
export type FinishReason = 'stop' | 'length' | 'abort' | 'tool_calls'

export interface ChatCompletion {
  id: string
  object: 'chat.completion'
  created: number
  model: string
  choices: { index: number; message: { role: 'assistant'; content: string | null; tool_calls?: ToolCall[] }; logprobs: ChatLogprobs | null; finish_reason: FinishReason }[]
  usage: OpenAIUsage
  system_fingerprint: null
  timings: OpenAITimings
}

export interface ChatCompletionChunk {
  id: string
  object: 'chat.completion.chunk'
  created: number
  model: string
  choices: { index: number; delta: { role?: 'assistant'; content?: string; tool_calls?: (ToolCall & { index: number })[] }; logprobs: ChatLogprobs | null; finish_reason: FinishReason | null }[]
  /** Present with `stream_options.include_usage`: null except on the last chunk. */
  usage?: OpenAIUsage | null
  system_fingerprint: null
  timings?: OpenAITimings
}

export interface TextCompletion {
  id: string
  object: 'text_completion'
  created: number
  model: string
  choices: { index: number; text: string; logprobs: TextLogprobs | null; finish_reason: FinishReason | null }[]
  usage?: OpenAIUsage | null
  system_fingerprint: null
  timings?: OpenAITimings
}

export interface ChatFunction {
  /** Answer `messages` with the model's chat template (the short form). */
  (messages: ChatMessage[], options?: GenerateOptions): Promise<Completion>
  completions: {
    /** OpenAI's call, as the `openai` package and WebLLM have it. */
    create(request: ChatCompletionRequest & { stream: true }): AsyncIterableIterator<ChatCompletionChunk>
    create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>
  }
}

/**
 * A loaded Llama model. Every call runs on a worker thread, so the event loop stays free.
 * Concurrent calls on one model are safe and run in parallel: each gets its own KV state.
 */
export declare class Llama {
  private constructor()
  /** Load a model folder (config.json + safetensors + tokenizer) or a .gguf file, off the main thread. */
  static load(model: string | URL, options?: LoadOptions): Promise<Llama>
  /** `llm.chat(messages)`, and `llm.chat.completions.create({ messages, ... })`. */
  readonly chat: ChatFunction
  readonly completions: {
    create(request: CompletionRequest & { stream: true }): AsyncIterableIterator<TextCompletion>
    create(request: CompletionRequest & { stream?: false }): Promise<TextCompletion>
  }
  chatStream(messages: ChatMessage[], options?: GenerateOptions): CompletionStream
  /** Raw completion: BOS, then `prompt`; no template. */
  generate(prompt: string, options?: GenerateOptions): Promise<Completion>
  generateStream(prompt: string, options?: GenerateOptions): CompletionStream
  /** Continue exactly these prompt ids (nothing added), like `yangtuo generate --ids`. */
  completeIds(ids: number[], options?: GenerateOptions): Promise<Completion>
  session(options?: { system?: string }): ChatSession
  /** Token ids of `text` (no BOS). */
  tokenize(text: string): number[]
  detokenize(ids: number[]): string
  /** Context length in tokens: prompt plus answer must fit. */
  readonly nCtx: number
  /** The device the model runs on. */
  readonly device: string
  readonly vocabSize: number
  /** The forward passes the batch scheduler ran and the sequences in them: `sequences / steps`
   * is the mean batch (`null` unless loaded with `parallel` > 1). */
  readonly batchStats: { steps: number; sequences: number } | null
}
