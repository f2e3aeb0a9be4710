# Sourced by the other scripts: exports LIBTORCH for the build (see build.md).
#
# Order: a LIBTORCH the user set wins; LIBTORCH_USE_PYTORCH=1 lets torch-sys ask python3's
# own torch; otherwise the official PyTorch wheel is installed once per machine into a cache
# outside the checkout, shared by every clone and by CI.

SEQ2SEQ_TORCH_VERSION=2.11.0

seq2seq_libtorch() {
    if [ -n "${LIBTORCH:-}" ]; then
        if [ ! -d "$LIBTORCH/lib" ] || [ ! -d "$LIBTORCH/include" ]; then
            echo "LIBTORCH=$LIBTORCH has no lib/ and include/ folders: point it at a libtorch or torch/ directory" >&2
            return 1
        fi
        return 0
    fi
    if [ -n "${LIBTORCH_USE_PYTORCH:-}" ]; then
        return 0
    fi

    local cache="${SEQ2SEQ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/seq2seq}"
    local dir="$cache/libtorch-$SEQ2SEQ_TORCH_VERSION"
    if [ ! -f "$dir/torch/lib/libtorch_cpu.so" ]; then
        mkdir -p "$cache"
        (
            # One installer at a time; a second clone waits, then finds it done.
            flock 9
            if [ ! -f "$dir/torch/lib/libtorch_cpu.so" ]; then
                local partial="$dir.partial"
                rm -rf "$partial"
                echo "Installing PyTorch $SEQ2SEQ_TORCH_VERSION (libtorch with its CUDA libraries, about 4.6 GB)" >&2
                echo "into $dir; this happens once per machine. pip shows its progress below." >&2
                # Not --quiet: a download of minutes must show that it moves (pip draws a bar on a
                # terminal and names each file otherwise). A stop leaves only the .partial folder,
                # which the next try removes.
                python3 -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
                    --progress-bar on --target "$partial" "torch==$SEQ2SEQ_TORCH_VERSION" >&2
                # The rename makes a half-finished install invisible.
                rm -rf "$dir"
                mv "$partial" "$dir"
            fi
        ) 9>"$cache/.install.lock"
    fi
    export LIBTORCH="$dir/torch"
}

seq2seq_libtorch
