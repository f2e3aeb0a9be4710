//! Makes the binary find libtorch by itself and really link CUDA; see build.md.
//!
//! torch-sys (whose manifest says `links = "tch"`) exports the directory holding
//! libtorch's shared libraries as `DEP_TCH_LIBTORCH_LIB`.

use std::env;
use std::fs;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not export DEP_TCH_LIBTORCH_LIB; is torch-sys a direct dependency?");
    };
    let lib_dir = Path::new(&lib_dir);

    // (1) RUNPATH: the binary runs without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());

    // (2) Nothing in our code calls into libtorch_cuda.so directly, so under the default
    // `--as-needed` the linker drops it, CUDA kernels never register and
    // `Cuda::is_available()` is false even on a GPU machine. Keep it NEEDED.
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }

    println!("cargo:rustc-env=SEQ2SEQ_LIBTORCH_VERSION={}", libtorch_version(lib_dir));
}

/// The version libtorch was built as: `build-version` in a libtorch archive,
/// `version.py` in a PyTorch wheel; "unknown" when neither says.
fn libtorch_version(lib_dir: &Path) -> String {
    let Some(root) = lib_dir.parent() else {
        return "unknown".to_owned();
    };
    let build_version = root.join("build-version");
    let version_py = root.join("version.py");
    // Watch only files that exist: cargo treats a missing watched file as changed on every build.
    for file in [&build_version, &version_py] {
        if file.exists() {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    if let Ok(text) = fs::read_to_string(&build_version) {
        return text.trim().to_owned();
    }
    if let Ok(text) = fs::read_to_string(&version_py) {
        for line in text.lines() {
            if let Some(value) = line.strip_prefix("__version__ = ") {
                return value.trim().trim_matches('\'').trim_matches('"').to_owned();
            }
        }
    }
    "unknown".to_owned()
}
