// The `pipeline` binary links libtorch through the learn plugin: the same rpath and
// `--no-as-needed -ltorch` as that crate's own build script (link args do not propagate
// from a dependency), so the binary runs with no exported variables, here and on the GPU
// machine.
include!("plugins/learn/build.rs");
