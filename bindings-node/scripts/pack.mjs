// The npm tarballs as napi-rs lays them out: `yangtuo` (JavaScript only, with every
// platform package as an optional dependency) and one `yangtuo-<platform>` per built addon
// (`yangtuo.<platform>.node` here, from `npm run build` or a CI job on that OS), each
// holding its prebuilt `.node`. npm installs the one matching the user's os/cpu/libc.
//   node scripts/pack.mjs OUT_DIR      # prints the tarballs' paths
import { execFileSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const out = resolve(process.argv[2] ?? join(pkgDir, '..', 'dist', 'node'))
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
const read = (p) => JSON.parse(readFileSync(p, 'utf8'))
const main = read(join(pkgDir, 'package.json'))
const platforms = readdirSync(join(pkgDir, 'npm')).filter((d) => existsSync(join(pkgDir, 'npm', d, 'package.json')))

/** `npm pack` of `dir`'s files staged in a temporary folder; the tarball's path. */
function pack(stage) {
  const [{ filename }] = JSON.parse(execFileSync(npm, ['pack', '--json', '--pack-destination', out], { cwd: stage, encoding: 'utf8' }))
  rmSync(stage, { recursive: true, force: true })
  return join(out, filename)
}

mkdirSync(out, { recursive: true })
const tarballs = []
for (const p of platforms) {
  const meta = read(join(pkgDir, 'npm', p, 'package.json'))
  if (meta.version !== main.version) throw new Error(`npm/${p}/package.json has version ${meta.version}, the package ${main.version}`)
  const addon = join(pkgDir, meta.main)
  if (!existsSync(addon)) continue // built on its own OS by CI
  const stage = mkdtempSync(join(tmpdir(), `yangtuo-${p}-`))
  cpSync(join(pkgDir, 'npm', p), stage, { recursive: true })
  copyFileSync(addon, join(stage, meta.main))
  // the build keeps line tables for backtraces (181 MB); the published addon needs none (27 MB)
  if (process.platform === 'linux' && meta.os?.includes('linux')) execFileSync('strip', [join(stage, meta.main)])
  tarballs.push(pack(stage))
}
const stage = mkdtempSync(join(tmpdir(), 'yangtuo-main-'))
for (const f of [...main.files, 'README.md']) cpSync(join(pkgDir, f), join(stage, f), { recursive: true })
const optionalDependencies = Object.fromEntries(platforms.map((p) => [read(join(pkgDir, 'npm', p, 'package.json')).name, main.version]))
const { devDependencies, scripts, ...published } = main
writeFileSync(join(stage, 'package.json'), `${JSON.stringify({ ...published, optionalDependencies }, null, 2)}\n`)
tarballs.unshift(pack(stage))
console.log(tarballs.join('\n'))
