#!/usr/bin/env bash
# Builds rmflow with `--features cuda` on a machine without a GPU or a CUDA install, and writes
# one self-contained artefact for a GPU machine (README, "GPU").
#
#   scripts/build-cuda.sh [COMPUTE_CAP]        # default 90 (H100); e.g. 80 for A100
#
# 1. Installs the pinned CUDA 13.0 wheels from PyPI into .cuda/wheels (not system-wide; about
#    1.2 GB; skipped when already there).
# 2. Assembles a toolkit layout in .cuda/toolkit (bin, include, lib64 with unversioned .so
#    links) and a `libcuda.so.1` link stub exporting the driver symbols cudarc binds (no wheel
#    ships libcuda; the real one comes with the GPU machine's driver).
# 3. Builds `cargo build --release --features cuda` with CUDA_COMPUTE_CAP set (target/cuda).
# 4. Strips the binary and writes dist/rmflow-cuda-smCC/ with the binary and `run.sh`, which finds
#    the CUDA runtime libraries of the GPU machine's PyTorch at run time (nvidia/cu13/lib in its
#    site-packages) and execs the binary with them on LD_LIBRARY_PATH; plus a .tar.xz of it.
#
# Re-running with everything in place downloads nothing and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
cc=${1:-${CUDA_COMPUTE_CAP:-90}}
[[ "$cc" =~ ^[0-9]{2,3}$ ]] || { echo "build-cuda: compute capability must be digits like 90, got '$cc'" >&2; exit 2; }
root=$PWD/.cuda
wheels=$root/wheels
toolkit=$root/toolkit
pins=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)
stamp=$wheels/.pins
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${pins[*]}" ]]; then
    echo "build-cuda: installing the CUDA 13.0 wheels into $wheels (about 1.2 GB)" >&2
    rm -rf "$wheels.tmp"
    python3 -m pip install --quiet --no-deps --target "$wheels.tmp" "${pins[@]}"
    rm -rf "$wheels"
    mv "$wheels.tmp" "$wheels"
    echo "${pins[*]}" > "$stamp"
fi
cu=$wheels/nvidia/cu13
[[ -x "$cu/bin/nvcc" ]] || { echo "build-cuda: no nvcc in $cu/bin after installing the wheels" >&2; exit 1; }

# Toolkit layout: nvcc finds its siblings (nvvm, crt headers) relative to its own folder.
mkdir -p "$toolkit/lib64"
for d in bin include nvvm; do
    [[ -e "$cu/$d" ]] && ln -sfn "$cu/$d" "$toolkit/$d"
done
for lib in "$cu"/lib/lib*.so.*; do
    base=$(basename "$lib")
    ln -sfn "$lib" "$toolkit/lib64/$base"
    ln -sfn "$lib" "$toolkit/lib64/${base%%.so.*}.so"
done

# libcuda stub: every cu* driver symbol cudarc's bindings name, as an empty function.
cargo fetch --quiet
cudarc_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19* 2>/dev/null | sort | tail -1)
[[ -n "$cudarc_src" ]] || { echo "build-cuda: cudarc 0.19 sources not found after cargo fetch" >&2; exit 1; }
if [[ ! -f "$toolkit/lib64/libcuda.so.1" || "$cudarc_src" -nt "$toolkit/lib64/libcuda.so.1" ]]; then
    grep -rhoE '\bcu[A-Z][A-Za-z0-9_]*' "$cudarc_src/src/driver/sys" | sort -u |
        awk '{ printf "void %s(void) {}\n", $1 }' > "$root/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$toolkit/lib64/libcuda.so.1" "$root/libcuda_stub.c"
    ln -sfn libcuda.so.1 "$toolkit/lib64/libcuda.so"
fi

echo "build-cuda: cargo build --release --features cuda (CUDA_COMPUTE_CAP=$cc)" >&2
PATH=$toolkit/bin:$PATH \
CUDA_ROOT=$toolkit CUDA_PATH=$toolkit CUDA_HOME=$toolkit \
CUDA_COMPUTE_CAP=$cc \
LIBRARY_PATH=$toolkit/lib64${LIBRARY_PATH:+:$LIBRARY_PATH} \
LD_LIBRARY_PATH=$toolkit/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
    cargo build --release --features cuda --target-dir target/cuda

dist=dist/rmflow-cuda-sm$cc
rm -rf "$dist.tmp"
mkdir -p "$dist.tmp"
cp target/cuda/release/rmflow "$dist.tmp/rmflow"
strip "$dist.tmp/rmflow"
cat > "$dist.tmp/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the CUDA build of rmflow with the CUDA 13 runtime libraries of this machine's PyTorch
# (libcudart, libcublas, libcublasLt, libcurand, libnvrtc from nvidia/cu13/lib in its
# site-packages); libcuda.so.1 comes from the driver. RMFLOW_CUDA_LIBS overrides the search.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
libs=${RMFLOW_CUDA_LIBS:-}
if [[ -z "$libs" ]]; then
    libs=$(python3 - <<'PY' 2>/dev/null || true
import os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for r in roots:
    d = os.path.join(r, "nvidia", "cu13", "lib")
    if os.path.isfile(os.path.join(d, "libcudart.so.13")):
        print(d)
        break
PY
)
fi
if [[ -z "$libs" || ! -f "$libs/libcudart.so.13" ]]; then
    echo "run.sh: no CUDA 13 runtime found (looked for nvidia/cu13/lib/libcudart.so.13 in Python's site-packages); set RMFLOW_CUDA_LIBS to the folder that has it" >&2
    exit 2
fi
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec "$here/rmflow" "$@"
RUN
chmod +x "$dist.tmp/run.sh"
rm -rf "$dist"
mv "$dist.tmp" "$dist"
tar -C dist -cJf "$dist.tar.xz.tmp" "rmflow-cuda-sm$cc"
mv "$dist.tar.xz.tmp" "$dist.tar.xz"
echo "build-cuda: wrote $dist (binary $(du -h "$dist/rmflow" | cut -f1)) and $dist.tar.xz ($(du -h "$dist.tar.xz" | cut -f1))"
echo "build-cuda: try it here on the CPU: LD_LIBRARY_PATH=$toolkit/lib64 $dist/rmflow lm --help"
