// Types of the browser package `yangtuo-web` (js/yangtuo.js).

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant'
  content: string
}

export interface LoadProgress {
  loaded: number
  total: number
  file: string
  tensor: string
}

export interface LoadOptions {
  /**
   * A Hugging Face repo id (`owner/name:QUANT` picks one GGUF file by its quant, `owner/name`
   * a safetensors repo), a URL of a .gguf file or of a model folder (start a relative one
   * with `/` or `./`), or the files a user picked.
   */
  model: string | FileList | File[]
  onProgress?: (p: LoadProgress) => void
  /** `llama2`, `llama2-chinese`; default: the model's own, else `llama2`. */
  template?: string
  nCtx?: number
  /**
   * How the KV cache stores keys and values: `auto` (default: f16 where WebGPU has
   * shader-f16, else f32), `f16` (half the memory, on any WebGPU device) or `f32`.
   */
  kvCacheDtype?: 'auto' | 'f16' | 'f32'
  /**
   * Conversations answered at once by one batch (default 1): with 2 or more, concurrent
   * `chat` / `chatStream` calls share each forward pass (continuous batching, as
   * `yangtuo serve --parallel`), so two chats in one page cost about one in memory
   * traffic. Answers are the ones each would get alone.
   */
  parallel?: number
  /**
   * Where downloads are kept so a reload fetches nothing and a broken download resumes:
   * `true` or `'cache'` (the Cache API, default), `'opfs'` (the Origin Private File System),
   * `false` (nowhere).
   */
  cache?: boolean | 'cache' | 'opfs'
  /** `auto` (default): WebGPU, else the CPU backend in wasm; or `webgpu`, `cpu`. */
  backend?: 'auto' | 'webgpu' | 'cpu'
  /** The hub for repo ids (default `https://huggingface.co`; a mirror such as `https://hf-mirror.com`). */
  endpoint?: string
}

/** A model kept in the browser by `Llama.load`. */
export interface CachedModel {
  /** The repo id or URL it was loaded by. */
  model: string
  bytes: number
  /** False while (or after) a download broke off; the next load resumes it. */
  complete: boolean
  files: string[]
  cache: 'cache' | 'opfs'
}

/** Options of the short forms `chat` / `chatStream` (Meta's defaults: temperature 0.6, top_p 0.9). */
export interface ChatOptions {
  maxTokens?: number
  temperature?: number
  topP?: number
  topK?: number
  minP?: number
  repetitionPenalty?: number
  seed?: number
  stop?: string | string[]
  allowControlTokens?: boolean
  /** `truncate-oldest` (a session's default) or `error` (a one-shot chat's). */
  contextOverflow?: 'truncate-oldest' | 'error'
  signal?: AbortSignal
  onDelta?: (delta: string) => void
}

export interface ChatResult {
  content: string
  finishReason: 'stop' | 'length'
  usage: { promptTokens: number; completionTokens: number; totalTokens: number }
  prefillTokS: number
  decodeTokS: number
  ttftS: number
  /** The oldest turns left out so the chat fits the context. */
  droppedTurns: number
}

/** OpenAI's request fields; the engine rejects any it does not implement, naming it. */
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
  /** Functions the model may call (README, "Tool calls"). */
  tools?: ToolDefinition[]
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } }
  parallel_tool_calls?: boolean
  user?: string
  context_overflow?: 'truncate-oldest' | 'error'
  ignore_eos?: boolean
  signal?: AbortSignal
}

export interface OpenAIUsage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
  prompt_tokens_details: { cached_tokens: number }
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
  timings: { prefill_tokens: number; prefill_s: number; ttft_s: number; decode_tokens: number; decode_s: number }
}

export interface ChatCompletionChunk {
  id: string
  object: 'chat.completion.chunk'
  created: number
  model: string
  choices: { index: number; delta: { role?: 'assistant'; content?: string; tool_calls?: (ToolCall & { index: number })[] }; logprobs: ChatLogprobs | null; finish_reason: FinishReason | null }[]
  usage?: OpenAIUsage | null
  system_fingerprint: null
}

export interface TextCompletion {
  id: string
  object: 'text_completion'
  created: number
  model: string
  choices: { index: number; text: string; logprobs: TextLogprobs | null; finish_reason: FinishReason | null }[]
  usage?: OpenAIUsage | null
  system_fingerprint: null
}

export interface ChatFunction {
  (messages: ChatMessage[], opts?: ChatOptions): Promise<ChatResult>
  completions: {
    create(request: OpenAIRequestFields & { messages: OpenAIMessage[]; stream: true }): AsyncIterableIterator<ChatCompletionChunk>
    create(request: OpenAIRequestFields & { messages: OpenAIMessage[]; stream?: false }): Promise<ChatCompletion>
  }
}

export declare class Session {
  readonly messages: ChatMessage[]
  reset(): void
  chat(text: string, opts?: ChatOptions): Promise<ChatResult>
  chatStream(text: string, opts?: ChatOptions): AsyncIterableIterator<string>
}

export declare class Llama {
  static load(options: LoadOptions): Promise<Llama>
  readonly device: string
  readonly nCtx: number
  /** The forward passes the batch ran and the conversations in them (`null` without `parallel`). */
  readonly batchStats: { steps: number; sequences: number } | null
  readonly template: string
  tokenize(text: string): number[]
  detokenize(ids: number[]): string
  /** `llm.chat(messages)`, and WebLLM's `llm.chat.completions.create({ messages, ... })`. */
  readonly chat: ChatFunction
  readonly completions: {
    create(request: OpenAIRequestFields & { prompt: string; stream: true }): AsyncIterableIterator<TextCompletion>
    create(request: OpenAIRequestFields & { prompt: string; stream?: false }): Promise<TextCompletion>
  }
  chatStream(messages: ChatMessage[], opts?: ChatOptions): AsyncIterableIterator<string>
  session(options?: { system?: string }): Session
}

/** Forget every cached download, in both stores. */
export declare function clearCache(): Promise<void>

/** The models kept in the browser, the largest first. */
export declare function listCachedModels(): Promise<CachedModel[]>

/** Delete one kept model (by `CachedModel.model`); resolves to whether it was there. */
export declare function deleteCachedModel(model: string): Promise<boolean>

/** The wasm engine's memory, in bytes. */
export declare function wasmMemoryBytes(): Promise<number>

export declare class WorkerSession {
  /** The conversation as of the last answer or reset. */
  readonly messages: ChatMessage[]
  reset(): Promise<void>
  chat(text: string, opts?: ChatOptions): Promise<ChatResult>
  chatStream(text: string, opts?: ChatOptions): AsyncIterableIterator<string>
}

/** `Llama`'s calls, answered by the engine in a Web Worker; `tokenize` and `detokenize` are
 * promises here. */
export declare class WorkerLlama {
  readonly device: string
  readonly nCtx: number
  readonly template: string
  tokenize(text: string): Promise<number[]>
  detokenize(ids: number[]): Promise<string>
  readonly chat: ChatFunction
  readonly completions: Llama['completions']
  chatStream(messages: ChatMessage[], opts?: ChatOptions): AsyncIterableIterator<string>
  session(options?: { system?: string }): WorkerSession
  listCachedModels(): Promise<CachedModel[]>
  deleteCachedModel(model: string): Promise<boolean>
  wasmMemoryBytes(): Promise<number>
  /** End the worker and free its memory. */
  terminate(): void
}

/**
 * Load a model in `worker`, a module Worker running `js/worker.js`:
 * `new Worker(new URL('yangtuo-web/js/worker.js', import.meta.url), { type: 'module' })`.
 * The page stays responsive while the model loads and answers.
 */
export declare function createWorkerEngine(worker: Worker, options: LoadOptions): Promise<WorkerLlama>
