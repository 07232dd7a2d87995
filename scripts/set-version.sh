#!/usr/bin/env bash
# One version for everything, set in one place: the workspace's Cargo.toml (which the CLI,
# core, the Python wheel through maturin, and the Node addon read), copied here into the
# files that cannot read it: bindings-wasm/Cargo.toml and the npm package.json files.
#   bash scripts/set-version.sh 0.2.0     # then add its section to CHANGELOG.md
# tests/tests/versions.rs fails while any of them disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
v="${1:?usage: scripts/set-version.sh X.Y.Z}"
[[ "$v" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] || { echo "not a semver version: $v" >&2; exit 1; }
sed -i "/^\[workspace.package\]/,/^\[/ s/^version = \".*\"/version = \"$v\"/" Cargo.toml
sed -i "0,/^version = \".*\"/ s//version = \"$v\"/" bindings-wasm/Cargo.toml
for f in bindings-node/package.json bindings-node/npm/*/package.json bindings-wasm/package.json; do
  node -e "const fs=require('fs');const p=JSON.parse(fs.readFileSync('$f'));p.version='$v';fs.writeFileSync('$f',JSON.stringify(p,null,2)+'\n')"
done
echo "version $v; now add it to CHANGELOG.md"
