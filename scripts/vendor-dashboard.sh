#!/usr/bin/env bash
# Vendors the dashboard's front-end libraries into src/hearth/dashboard/static/vendor/:
# each package's tarball at a pinned version from the npm registry, checked against its
# pinned integrity (the registry's sha512) before anything is unpacked, then the one file
# the page loads and the package's licence. The result is committed, so neither an install
# nor a run of `hearth serve` needs the internet or Node.js. To upgrade: change a version
# and its integrity (`npm view PACKAGE@VERSION dist.integrity`), run this, read the diff.
set -euo pipefail
cd "$(dirname "$0")/.."

registry="${NPM_REGISTRY:-https://registry.npmjs.org}"
dest=src/hearth/dashboard/static/vendor

# package version integrity file-in-package vendored-name
packages=(
  "preact 11.2.0 sha512-/HfHI/7N84e6GrWBJ3J280z3mLaRJiDcSvj/A+y/4AbLnND/1UlGHe1sR6oYuTGwId0nP7dqDU9OnLxMPZ7xBg== dist/preact.mjs preact.js"
  "preact 11.2.0 sha512-/HfHI/7N84e6GrWBJ3J280z3mLaRJiDcSvj/A+y/4AbLnND/1UlGHe1sR6oYuTGwId0nP7dqDU9OnLxMPZ7xBg== hooks/dist/hooks.mjs preact-hooks.js"
  "htm 3.1.1 sha512-983Vyg8NwUE7JkZ6NmOqpCZ+sh1bKv2iYTlUkzlWmA5JD2acKoxd4KVxbMmxX/85mtfdnDmTFoNKcg5DGAvxNQ== dist/htm.module.js htm.js"
  "uplot 1.6.32 sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw== dist/uPlot.esm.js uplot.js"
  "uplot 1.6.32 sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw== dist/uPlot.min.css uplot.css"
)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest/licenses"
: >"$work/versions"

for entry in "${packages[@]}"; do
  read -r name version integrity file vendored <<<"$entry"
  tarball="$work/$name-$version.tgz"
  if [[ ! -f "$tarball" ]]; then
    curl -fsSL --retry 3 -o "$tarball" "$registry/$name/-/$name-$version.tgz"
    actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    if [[ "$actual" != "$integrity" ]]; then
      echo "vendor-dashboard: $name@$version: integrity $actual, expected $integrity" >&2
      exit 1
    fi
    mkdir -p "$work/$name"
    tar -xzf "$tarball" -C "$work/$name"
    cp "$work/$name/package/LICENSE" "$dest/licenses/$name.txt"
    echo "$name $version $integrity" >>"$work/versions"
  fi
  cp "$work/$name/package/$file" "$dest/$vendored"
done
cp "$work/versions" "$dest/VERSIONS"
echo "vendor-dashboard: $(wc -l <"$dest/VERSIONS") packages in $dest" >&2
