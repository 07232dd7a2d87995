// ESM entry: the same classes as the CommonJS entry (one native addon, loaded once).
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
export const { Llama, ChatSession } = require('./index.js')
